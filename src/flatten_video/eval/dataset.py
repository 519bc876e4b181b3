"""The LOVEU-TGVE-2023 dataset (docs/architecture.md, The method (evaluation)): its captions CSV, its frame folders, and the
(video, edit) items a benchmark run edits.

    DATA_DIR/LOVEU-TGVE-2023_Dataset.csv            captions, one row per video
    DATA_DIR/<subset>/480p_frames/<video>/*.jpg     DAVIS_480p, youtube_480p, videvo_480p

The official CSV has its header on the first line (``Video name``, ``Our GT caption``, ``Style
Change Caption``, ``Object Change Caption``, ``Background Change Caption``, ``Multiple Changes
Caption``) and opens each subset with a row whose ``Video name`` is ``DAVIS Videos:``, ``Youtube
Videos:`` or ``Videvo Videos:`` and whose other cells are empty, with blank rows between subsets.
"""

from __future__ import annotations

import csv
import pathlib
import re
from dataclasses import dataclass

#: The four edit prompts of every LOVEU-TGVE video, in the CSV's column order.
EDITS = ("style", "object", "background", "multiple")

#: Subset keyword -> the paper's name for that split, in the order the summary lists them.
SPLITS = (("davis", "TGVE-D (DAVIS)"), ("videvo", "TGVE-V (Videvo)"), ("youtube", "YouTube"))


class BenchError(RuntimeError):
    """Nothing can run (no captions CSV, nothing selected...), or ``--fail-fast`` stopped the run."""


@dataclass(frozen=True)
class Item:
    """One (video, edit) of the benchmark.

    ``error`` is set when the CSV or the folder already shows the item cannot run (empty prompt,
    unknown subset, no frames folder); it is reported as a failure of this item.
    """

    subset: str
    video: str
    edit: str
    prompt: str
    frames_dir: pathlib.Path | None = None
    caption: str = ""
    error: str | None = None

    @property
    def name(self) -> str:
        return f"{self.subset}/{self.video}/{self.edit}"


def _norm(text: str) -> str:
    return " ".join(text.replace("_", " ").lower().split())


def subset_key(name: str) -> str:
    """'DAVIS Videos:', 'DAVIS', 'DAVIS_480p' and ' davis 480p' -> 'davis': how CSV subset rows meet folders."""
    key = _norm(name).replace(" ", "").rstrip(":")
    return re.sub(r"480p$", "", re.sub(r"videos?$", "", key))


def split_name(subset: str) -> str:
    """The paper's split of a subset ('DAVIS_480p' -> 'TGVE-D (DAVIS)'); unknown subsets stand alone."""
    key = subset_key(subset)
    return next((label for keyword, label in SPLITS if keyword in key), subset)


def find_csv(data_dir: pathlib.Path, csv_path: str | None = None) -> pathlib.Path:
    """The captions CSV: ``csv_path`` if given, else the one CSV (or the one naming TGVE) in ``data_dir``."""
    if csv_path is not None:
        path = pathlib.Path(csv_path)
        if not path.is_file():
            raise BenchError(f"captions CSV not found: {path}")
        return path
    if not data_dir.is_dir():
        raise BenchError(f"not a folder: {data_dir}")
    found = sorted(data_dir.glob("*.csv"))
    named = [p for p in found if "tgve" in p.name.lower()]
    if len(found) == 1 or len(named) == 1:
        return (named or found)[0]
    if not found:
        raise BenchError(f"no captions CSV (e.g. LOVEU-TGVE-2023_Dataset.csv) in {data_dir}; pass --csv")
    raise BenchError(f"several CSV files in {data_dir} ({', '.join(p.name for p in found)}); pick one with --csv")


#: The captions CSV's columns by role, named as the official file names them (case, spacing and
#: underscores aside); "subset" is optional, as is the source caption.
COLUMNS = {"video": "Video name", "caption": "Our GT caption", "style": "Style Change Caption",
           "object": "Object Change Caption", "background": "Background Change Caption",
           "multiple": "Multiple Changes Caption", "subset": "subset"}
REQUIRED_COLUMNS = ("video", *EDITS)


def _column_roles(header: list[str]) -> tuple[dict[str, int], list[str]]:
    """(role -> column index, the roles named by more than one column) of a row, columns matched
    by their whole name: a column that only contains a word ("Object count") is no caption."""
    roles: dict[str, int] = {}
    twice = []
    for index, cell in enumerate(header):
        role = next((r for r, name in COLUMNS.items() if _norm(cell) == _norm(name)), None)
        if role in roles:
            twice.append(role)
        elif role:
            roles[role] = index
    return roles, twice


def _subset_row(cells: list[str], known: set[str]) -> str | None:
    """The subset a row opens, or None when it is no subset row.

    A subset row has one filled cell that ends with ':' (the official "DAVIS Videos:") or names a
    known subset or a folder of the data folder ("DAVIS_480p", "youtube"). Any other one-cell row
    is a video whose prompts are empty.
    """
    filled = [c for c in cells if c]
    if len(filled) == 1 and (filled[0].endswith(":") or subset_key(filled[0]) in known):
        return filled[0]
    return None


def load_items(data_dir: pathlib.Path, csv_path: pathlib.Path) -> list[Item]:
    """Every (video, edit) of a LOVEU-TGVE captions CSV, in file order.

    The header is the first row that names a video column and the four edit columns. Each subset
    starts with a subset row (see :func:`_subset_row`: the official ``DAVIS Videos:``, or the
    folder's name); a "subset" column works too. Blank rows are skipped. Problems of single rows
    (empty prompt, a subset without a folder, a row before any subset row) become item errors; a
    file with no usable header raises :class:`BenchError`.
    """
    try:
        rows = list(csv.reader(csv_path.read_text(encoding="utf-8-sig").splitlines()))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise BenchError(f"cannot read captions CSV {csv_path}: {error}") from None
    header_at = next((i for i, row in enumerate(rows) if "video" in _column_roles(row)[0]), None)
    if header_at is None:
        raise BenchError(f"{csv_path} has no header row with a 'Video name' column; is it the LOVEU-TGVE captions file?")
    roles, twice = _column_roles(rows[header_at])
    missing = [COLUMNS[role] for role in REQUIRED_COLUMNS if role not in roles]
    if missing or twice:
        problem = (f"no column named {', '.join(map(repr, missing))}" if missing else
                   f"more than one column named {', '.join(repr(COLUMNS[role]) for role in twice)}")
        raise BenchError(f"the header of {csv_path} (line {header_at + 1}) has {problem}: the captions are read from "
                         f"the columns named {', '.join(repr(COLUMNS[r]) for r in REQUIRED_COLUMNS)}")
    if not data_dir.is_dir():
        raise BenchError(f"not a folder: {data_dir}")
    folders = {subset_key(p.name): p for p in sorted(data_dir.iterdir()) if p.is_dir()}
    known = folders.keys() | {keyword for keyword, _ in SPLITS}
    lines = [(line, [c.strip() for c in row]) for line, row in enumerate(rows[header_at + 1 :], start=header_at + 2)]
    # Named in the errors of rows that find no subset, so the reader sees what the file holds.
    seen = [subset for _, cells in lines if (subset := _subset_row(cells, known))]
    context = (
        f"subset rows in {csv_path.name}: {', '.join(repr(s) for s in seen) or 'none'}; "
        f"folders in {data_dir}: {', '.join(p.name for p in folders.values()) or 'none'}"
    )

    items, subset = [], ""
    for line, cells in lines:
        if not any(cells):
            continue
        if opened := _subset_row(cells, known):
            subset = opened
            continue
        cell = lambda role: cells[roles[role]] if role in roles and roles[role] < len(cells) else ""  # noqa: E731
        row_subset = cell("subset") or subset
        folder = folders.get(subset_key(row_subset))
        frames_dir, error = _frames_dir(folder, row_subset, cell("video"), line, context)
        video = cell("video") or f"line-{line}"
        for edit in EDITS:
            prompt = cell(edit)
            problem = error or (None if prompt else f"empty '{edit}' prompt in {csv_path.name}, line {line}")
            subset_name = folder.name if folder else (row_subset or "unknown")
            items.append(Item(subset_name, video, edit, prompt, frames_dir, cell("caption"), problem))
    return items


def _frames_dir(folder: pathlib.Path | None, subset: str, video: str, line: int, context: str):
    """(frames folder, None) or (None, why not) for a video of a subset."""
    if not subset:
        return None, f"line {line} comes before any subset row and the CSV has no subset column ({context})"
    if folder is None:
        return None, f"no folder for subset {subset!r} of line {line} ({context})"
    if not video:
        return None, f"no video name on line {line}"
    candidates = [folder / "480p_frames" / video, folder / video]
    found = next((p for p in candidates if p.exists()), None)
    return (found, None) if found else (None, f"no frames folder for video {video!r} (looked for {candidates[0]})")


def select_items(items: list[Item], subsets=None, videos=None, edits=None, limit=None) -> list[Item]:
    """The items of the given subsets (lenient names), videos and edits, at most ``limit`` of them."""
    if subsets:
        keys = {subset_key(s) for s in subsets}
        items = [i for i in items if subset_key(i.subset) in keys]
    if videos:
        items = [i for i in items if i.video in set(videos)]
    if edits:
        items = [i for i in items if i.edit in set(edits)]
    return items[:limit] if limit is not None else items


def shard(items: list[Item], index: int, count: int) -> list[Item]:
    """The items process ``index`` of ``count`` runs: every ``count``-th video, round robin in order.

    Whole videos go to one process so its inversion is computed once and reused for its edits.
    Every process computes the same split from the same list: disjoint and complete.
    """
    videos = list(dict.fromkeys((i.subset, i.video) for i in items))
    mine = set(videos[index::count])
    return [i for i in items if (i.subset, i.video) in mine]
