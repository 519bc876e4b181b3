"""Means of a benchmark run per split (TGVE-D, TGVE-V, YouTube) and overall: summary.md and summary.csv."""

from __future__ import annotations

import math
import pathlib

from .dataset import SPLITS, split_name
from .metrics import FRAME_PAIRS, Scores
from .records import finite_or_none, read_record, write_text_atomic

#: Score key, printed name, unit note (values are in the papers' table units).
METRICS = (
    ("clip_t", "CLIP-T", "x100, higher is better"),
    ("clip_f", "CLIP-F", "x100, higher is better"),
    ("e_warp", "Ewarp", "x1000, lower is better"),
    ("s_edit", "Sedit", "CLIP-T / Ewarp (raw), higher is better"),
    ("pick_score", "PickScore", "higher is better"),
)


def _mean(values) -> float | None:
    """Mean of the finite values, None when there are none (e.g. PickScore skipped)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    return math.fsum(values) / len(values) if values else None


def summary_row(name: str, records: list[dict]) -> dict:
    """Means of a group of item records, in table units (None where no item has a value)."""
    means = {key: _mean(r["scores_raw"].get(key) for r in records) for key in ("clip_t", "clip_f", "e_warp", "pick_score")}
    scores = Scores(**{key: math.nan if value is None else value for key, value in means.items()}, s_edit=math.nan)
    # Sedit of the group is the ratio of the group's means, so the row is consistent with its own
    # CLIP-T and Ewarp columns (as the paper's tables are).
    scores.s_edit = scores.clip_t / scores.e_warp if scores.e_warp else math.nan
    videos = len({(r["subset"], r["video"]) for r in records})
    return dict(split=name, videos=videos, edits=len(records), **finite_or_none(scores.to_table_units()))


def summarize(out: pathlib.Path, settings: dict) -> list[dict]:
    """Summary rows (per split, then overall) from every finished item JSON on disk with ``settings``.

    Reading the files, not this run's results, makes the summary complete after a resumed run and
    when several processes shared the work.
    """
    records = [r for p in sorted((out / "items").rglob("*.json")) if (r := read_record(p)) and r.get("settings") == settings]
    order = [label for _, label in SPLITS]
    splits = sorted({split_name(r["subset"]) for r in records}, key=lambda s: (order.index(s) if s in order else len(order), s))
    rows = [summary_row(s, [r for r in records if split_name(r["subset"]) == s]) for s in splits]
    return rows + [summary_row("Overall", records)] if records else []


def write_summary(out: pathlib.Path, rows: list[dict], settings: dict) -> str:
    """Write summary.md and summary.csv; returns the Markdown table.

    Both say which frame pairs CLIP-F averages (``settings["frame_pairs"]``): a line in the
    Markdown, a ``clip_f_pairs`` column in the CSV.
    """
    pairs = settings["frame_pairs"]
    columns = ["split", "videos", "edits", *(key for key, *_ in METRICS)]
    header = ["Split", "Videos", "Edits", *(f"{name} {'↓' if key == 'e_warp' else '↑'}" for key, name, _ in METRICS)]

    def cell(value, digits: int, missing: str) -> str:
        return missing if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(row[c], 2, "n/a") for c in columns) + " |" for row in rows]
    table = "\n".join(lines)
    write_text_atomic(
        out / "summary.md",
        f"# LOVEU-TGVE-2023 results\n\n{table}\n\n"
        "CLIP-T and CLIP-F x100, Ewarp x1000, Sedit = CLIP-T / Ewarp of the raw means, PickScore as is.\n\n"
        f"CLIP-F: mean cosine over {FRAME_PAIRS[pairs]} (frame_pairs={pairs}).\n\n"
        f"Settings: {', '.join(f'{k}={v}' for k, v in settings.items())}\n",
    )
    csv_lines = [",".join([*columns, "clip_f_pairs"])]
    csv_lines += [",".join([*(cell(row[c], 4, "") for c in columns), pairs]) for row in rows]
    write_text_atomic(out / "summary.csv", "\n".join(csv_lines) + "\n")
    return table
