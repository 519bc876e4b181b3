"""Scoring edits and running the LOVEU-TGVE-2023 benchmark: ``flatten-video eval`` and ``bench``.

``eval EDITED SOURCE --prompt TEXT`` scores one edit with :func:`flatten_video.metrics.evaluate_video`.

``bench DATA_DIR`` edits every (video, edit prompt) of a LOVEU-TGVE-2023 folder::

    DATA_DIR/LOVEU-TGVE-2023_Dataset.csv            captions, one row per video
    DATA_DIR/<subset>/480p_frames/<video>/*.jpg     e.g. DAVIS_480p, youtube_480p, videvo_480p

and writes, under the output folder (``OUT/<ablation>/`` with ``--ablation``)::

    items/<subset>/<video>/<edit>.json   settings, prompt, scores (table units and raw), timings
    items/<subset>/<video>/<edit>.mp4    the edited video
    summary.md, summary.csv              means per split (TGVE-D, TGVE-V, YouTube) and overall
    failures.json                        the items that failed in the last run, if any

Each source video is read, its flow and trajectories computed, VAE-encoded and inverted once; its
edit prompts are then sampled from the same :class:`~flatten_video.FlattenInversion` (sampling
does not change it). Item files are written atomically and a rerun skips items whose JSON holds
the same settings, so an interrupted run resumes where it stopped. Under ``accelerate launch``
videos are sharded across processes and the main process writes the summary from the item files
on disk.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import pathlib
import re
import shlex
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import groupby

from .cli import add_edit_arguments, default_device, error_line, load_pipeline, resolve_dtype
from .context import FLOW_GUIDED_MODES
from .editing import EditSettings
from .files import atomic_write

#: The four edit prompts of every LOVEU-TGVE video, in the CSV's column order.
EDITS = ("style", "object", "background", "multiple")

#: Paper Table 2 rows: ablation name -> (attention_mode, flatten_variant).
ABLATIONS = {
    "base": ("spatial", "II"),
    "dsta": ("dsta", "II"),
    "flatten": ("flatten", "II"),
    "full": ("dsta+flatten", "II"),
    "combo-I": ("dsta+flatten", "I"),
}

#: Score key, printed name, unit note (values are in the papers' table units).
METRICS = (
    ("clip_t", "CLIP-T", "x100, higher is better"),
    ("clip_f", "CLIP-F", "x100, higher is better"),
    ("e_warp", "Ewarp", "x1000, lower is better"),
    ("s_edit", "Sedit", "CLIP-T / Ewarp (raw), higher is better"),
    ("pick_score", "PickScore", "higher is better"),
)

#: Subset keyword -> the paper's name for that split, in the order the summary lists them.
SPLITS = (("davis", "TGVE-D (DAVIS)"), ("videvo", "TGVE-V (Videvo)"), ("youtube", "YouTube"))

#: The options that decide an item's result: a finished item is redone when one of them changes.
RESULT_OPTIONS = (
    "model", "lora", "lora_scale", "frames", "stride", "width", "height", "crop", "steps", "inversion_steps", "inject_steps",
    "guidance", "seed", "negative_prompt", "flow", "attention", "variant", "feature_mode", "fps",
    "side_by_side", "clip_model", "pick_model", "pick_processor", "frame_pairs",
)


class BenchError(RuntimeError):
    """Nothing can run (no captions CSV, nothing selected...), or ``--fail-fast`` stopped the run."""


# --------------------------------------------------------------------------- metrics options (eval and bench)


def add_metric_arguments(parser: argparse.ArgumentParser) -> None:
    from .metrics import DEFAULT_CLIP_MODEL, DEFAULT_PICK_MODEL, DEFAULT_PICK_PROCESSOR

    group = parser.add_argument_group("metrics")
    group.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL, help=f"CLIP for CLIP-T/CLIP-F, hub id or folder (default: {DEFAULT_CLIP_MODEL})")
    group.add_argument("--pick-model", default=DEFAULT_PICK_MODEL, help=f"PickScore model, hub id or folder (default: {DEFAULT_PICK_MODEL})")
    group.add_argument("--pick-processor", default=DEFAULT_PICK_PROCESSOR, help=f"PickScore's processor (default: {DEFAULT_PICK_PROCESSOR})")
    group.add_argument("--no-pick-score", action="store_true", help="skip PickScore (its model is ~4 GB)")
    group.add_argument("--frame-pairs", choices=("consecutive", "all"), default="consecutive", help="frame pairs of CLIP-F (default: consecutive)")


def metric_options(args: argparse.Namespace) -> dict:
    """Keyword arguments of :func:`~flatten_video.metrics.evaluate_video` from the metric options."""
    return dict(
        clip_model=args.clip_model,
        pick_model=None if args.no_pick_score else args.pick_model,
        pick_processor=args.pick_processor,
        frame_pairs=args.frame_pairs,
    )


def finite_or_none(scores: dict) -> dict:
    """Scores with NaN/inf as None, so the JSON we write is standard JSON (Sedit of a static edit is inf)."""
    return {k: v if v is None or math.isfinite(v) else None for k, v in scores.items()}


# --------------------------------------------------------------------------- eval


def run_eval(args: argparse.Namespace) -> int:
    from .metrics import evaluate_video
    from .video import read_video

    if not args.prompt.strip():
        raise ValueError("--prompt must not be empty")
    size = dict(width=args.width, height=args.height, crop=args.crop)
    # The stride is the one the edit took from the source; the edit itself holds exactly the
    # edited frames, so it is read with its own default stride (1 when it has --frames frames).
    source = read_video(args.source, args.frames, stride=args.stride, **size)
    edited = read_video(args.edited, args.frames, **size)
    scores = evaluate_video(
        edited.frames, source.frames, args.prompt, flow_method=args.flow,
        device=args.device or default_device(), **metric_options(args),
    )
    table = scores.to_table_units()
    if args.json:
        record = dict(
            edited=args.edited, source=args.source, prompt=args.prompt, frames=len(edited.frames),
            scores=finite_or_none(table), scores_raw=finite_or_none(scores.as_dict()),
        )
        print(json.dumps(record, indent=2))
    else:
        for key, name, unit in METRICS:
            value = table[key]
            print(f"{name:<10} {'n/a' if value is None else f'{value:.2f}':>8}   {unit}")
    return 0


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    from .flow import FLOW_METHODS

    parser.add_argument("edited", help="the edited video (file or folder of frames)")
    parser.add_argument("source", help="the source video it was made from (file or folder of frames)")
    parser.add_argument("--prompt", required=True, help="the edit prompt")
    parser.add_argument("--frames", type=int, default=32, help="frames to compare (default: 32)")
    parser.add_argument("--stride", type=int, default=None, help="stride the edit took from the source, as in edit (default: total // frames)")
    parser.add_argument("--width", type=int, default=None, help="working width, as in edit")
    parser.add_argument("--height", type=int, default=None, help="working height, as in edit")
    parser.add_argument("--crop", action="store_true", help="center-crop, as in edit")
    parser.add_argument("--flow", choices=FLOW_METHODS, default="raft", help="flow for Ewarp (default: raft)")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_metric_arguments(parser)


# --------------------------------------------------------------------------- the dataset


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
    """'DAVIS', 'DAVIS_480p' and ' davis 480p' -> 'davis': how CSV subset names meet folders."""
    return re.sub(r"480p$", "", _norm(name).replace(" ", ""))


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


def _column_roles(header: list[str]) -> dict[str, int]:
    """Column index of 'video', 'subset', 'caption' and each edit, matched by keyword (lenient)."""
    roles: dict[str, int] = {}
    for index, cell in enumerate(header):
        name = _norm(cell)
        # Edit columns first: "Style Change Caption" also contains "caption".
        role = next((e for e in EDITS if e in name), None)
        role = role or next((r for r in ("video", "subset", "caption") if r in name), None)
        if role:
            roles.setdefault(role, index)
    return roles


def load_items(data_dir: pathlib.Path, csv_path: pathlib.Path) -> list[Item]:
    """Every (video, edit) of a LOVEU-TGVE captions CSV, in file order.

    The official file introduces each subset with a row whose only filled cell names it
    ("DAVIS_480p", "youtube_480p", ...); a "subset" column works too. A one-cell row counts as a
    subset header when it names a folder of ``data_dir`` or a known subset, otherwise it is a
    video whose prompts are empty. Problems of single rows become item errors; a file with no
    usable header raises :class:`BenchError`.
    """
    try:
        rows = list(csv.reader(csv_path.read_text(encoding="utf-8-sig").splitlines()))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise BenchError(f"cannot read captions CSV {csv_path}: {error}") from None
    header_at = next((i for i, row in enumerate(rows) if {"video", *EDITS} <= _column_roles(row).keys()), None)
    if header_at is None:
        raise BenchError(
            f"{csv_path} has no header row with a 'Video name' column and the four edit caption columns "
            f"({', '.join(EDITS)}); is it the LOVEU-TGVE captions file?"
        )
    roles = _column_roles(rows[header_at])
    if not data_dir.is_dir():
        raise BenchError(f"not a folder: {data_dir}")
    folders = {subset_key(p.name): p for p in data_dir.iterdir() if p.is_dir()}
    known = folders.keys() | {keyword for keyword, _ in SPLITS}

    items, subset = [], ""
    for line, row in enumerate(rows[header_at + 1 :], start=header_at + 2):
        cells = [c.strip() for c in row]
        filled = [c for c in cells if c]
        if not filled:
            continue
        if len(filled) == 1 and subset_key(filled[0]) in known:
            subset = filled[0]
            continue
        cell = lambda role: cells[roles[role]] if role in roles and roles[role] < len(cells) else ""  # noqa: E731
        row_subset = cell("subset") or subset
        folder = folders.get(subset_key(row_subset))
        frames_dir, error = _frames_dir(folder, row_subset, cell("video"), line)
        video = cell("video") or f"line-{line}"
        for edit in EDITS:
            prompt = cell(edit)
            problem = error or (None if prompt else f"empty '{edit}' prompt in {csv_path.name}, line {line}")
            subset_name = folder.name if folder else (row_subset or "unknown")
            items.append(Item(subset_name, video, edit, prompt, frames_dir, cell("caption"), problem))
    return items


def _frames_dir(folder: pathlib.Path | None, subset: str, video: str, line: int):
    """(frames folder, None) or (None, why not) for a video of a subset."""
    if not subset:
        return None, f"line {line} comes before any subset row and the CSV has no subset column"
    if folder is None:
        return None, f"no folder for subset {subset!r} in the data folder"
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


# --------------------------------------------------------------------------- files


def write_text_atomic(path: pathlib.Path, text: str) -> None:
    """Write to a temporary file beside ``path`` and move it there: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: pathlib.Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2))


def item_path(out: pathlib.Path, item: Item) -> pathlib.Path:
    return out / "items" / item.subset / item.video / f"{item.edit}.json"


def read_record(path: pathlib.Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def is_finished(out: pathlib.Path, item: Item, settings: dict) -> bool:
    """Whether the item's JSON exists with these settings and this prompt."""
    record = read_record(item_path(out, item))
    return record is not None and record.get("settings") == settings and record.get("prompt") == item.prompt


# --------------------------------------------------------------------------- running


@dataclass
class PreparedVideo:
    """A source video ready for its edits: the clip, its inversion, its flows for Ewarp."""

    clip: object  # flatten_video.video.Video
    inversion: object  # flatten_video.FlattenInversion
    flows: tuple
    timings: dict


@contextmanager
def timed(timings: dict, name: str, device: str):
    start = time.perf_counter()
    yield
    if device.startswith("cuda"):  # CUDA runs asynchronously: wait for the work to be timed
        import torch

        torch.cuda.synchronize(device)
    timings[name] = round(time.perf_counter() - start, 3)


def prepare_video(pipe, item: Item, args, device: str, generator) -> PreparedVideo:
    """Read, flow, trajectories, VAE encoding and inversion of a source video: once per video."""
    from .flow import estimate_flow
    from .video import read_video

    timings: dict[str, float] = {}
    with timed(timings, "read", device):
        clip = read_video(item.frames_dir, args.frames, stride=args.stride, width=args.width, height=args.height, crop=args.crop)
    with timed(timings, "flow", device):
        # Ewarp needs the source's forward and backward flow; both are the same for every edit
        # of the video, so they are computed here once (backward = forward of the reversed clip).
        options = dict(method=args.flow, device=device, progress=False)
        flows = (estimate_flow(clip.frames, **options), estimate_flow(clip.frames.flip(0), **options).flip(0))
    with timed(timings, "trajectories", device):
        trajectories = (
            pipe.prepare_trajectories(clip.frames, generator=generator, progress=False, flows=flows[0])
            if args.attention in FLOW_GUIDED_MODES
            else {}
        )
    with timed(timings, "encode", device):
        latents = pipe.encode_video(clip.frames, generator)
    with timed(timings, "invert", device):
        inversion = pipe.invert(
            latents, trajectories, num_inversion_steps=args.inversion_steps, num_inference_steps=args.steps,
            inject_steps=args.inject_steps, feature_mode=args.feature_mode, attention_mode=args.attention,
            flatten_variant=args.variant,
        )
    return PreparedVideo(clip, inversion, flows, timings)


def run_item(pipe, video: PreparedVideo, item: Item, args, settings: dict, out: pathlib.Path, device: str, generator) -> dict:
    """Sample, decode, write and score one edit; its JSON is written last, marking it finished."""
    from .metrics import evaluate_video
    from .video import write_video

    timings: dict[str, float] = {}
    with timed(timings, "sample", device):
        latents = pipe.sample(
            video.inversion, item.prompt, args.negative_prompt, guidance_scale=args.guidance,
            generator=generator, attention_mode=args.attention, flatten_variant=args.variant,
        )
    with timed(timings, "decode", device):
        frames = pipe.decode_latents(latents)
    path = item_path(out, item)
    clip = video.clip
    with timed(timings, "write", device):
        side = clip.frames if args.side_by_side else None
        write_video(frames, path.with_suffix(".mp4"), fps=args.fps or clip.fps, side_by_side=side)
    with timed(timings, "metrics", device):
        scores = evaluate_video(frames, clip.frames, item.prompt, flows=video.flows, device=device, **metric_options(args))
    record = dict(
        subset=item.subset, video=item.video, edit=item.edit, split=split_name(item.subset),
        prompt=item.prompt, source_caption=item.caption, settings=settings,
        scores=finite_or_none(scores.to_table_units()), scores_raw=finite_or_none(scores.as_dict()),
        timings=dict(video=video.timings, **timings), output=path.with_suffix(".mp4").name,
        frames=dict(count=len(clip.frames), stride=clip.stride, total=clip.total_frames, width=clip.size[0],
                    height=clip.size[1], fps=clip.fps),
        device=device, finished=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    write_json_atomic(path, record)
    return record


def run_items(items: list[Item], args, settings: dict, out: pathlib.Path, device: str, rank: int = 0) -> list[dict]:
    """Run the pending items of this process, video by video; returns the failures.

    An item that fails is reported and the others go on, unless ``--fail-fast``. Failing to load
    the Stable Diffusion model is fatal (nothing could run) and raises.
    """
    import torch
    from tqdm.auto import tqdm

    failures: list[dict] = []
    if not items:
        return failures

    def fail(item: Item, error: BaseException) -> None:
        message = f"{item.name}: {error_line(error)}"
        failures.append(dict(item=item.name, subset=item.subset, video=item.video, edit=item.edit, error=message))
        tqdm.write(f"flatten-video bench: failed: {message}", file=sys.stderr)
        if args.fail_fast:
            raise BenchError(message) from error

    pipe = load_pipeline(args.model, device, resolve_dtype(args.dtype, device), args.lora, args.lora_scale)
    pipe.set_progress_bar_config(disable=True)  # one bar over items instead of one per denoising loop
    with tqdm(total=len(items), desc=f"bench [{rank}]" if rank else "bench", unit="edit", position=rank) as bar:
        for _, group in groupby(items, key=lambda i: (i.subset, i.video)):
            runnable = []
            for item in group:
                if item.error:
                    fail(item, BenchError(item.error))
                    bar.update()
                else:
                    runnable.append(item)
            if not runnable:
                continue
            # One generator per video, seeded as `edit` seeds it, so a bench item equals the same edit.
            generator = torch.Generator(device="cpu").manual_seed(args.seed)
            try:
                video = prepare_video(pipe, runnable[0], args, device, generator)
            except Exception as error:  # bad frames, too few frames, out of memory...: the video's items fail
                for item in runnable:
                    fail(item, error)
                    bar.update()
                continue
            for item in runnable:
                bar.set_postfix_str(item.name)
                try:
                    run_item(pipe, video, item, args, settings, out, device, generator)
                except Exception as error:  # e.g. a metrics model that cannot be loaded
                    fail(item, error)
                bar.update()
            del video  # frees the stored features before the next video's inversion
    return failures


# --------------------------------------------------------------------------- summary


def _mean(values) -> float | None:
    """Mean of the finite values, None when there are none (e.g. PickScore skipped)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    return math.fsum(values) / len(values) if values else None


def summary_row(name: str, records: list[dict]) -> dict:
    """Means of a group of item records, in table units (None where no item has a value)."""
    from .metrics import Scores

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
    """Write summary.md and summary.csv; returns the Markdown table."""
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
        f"Settings: {', '.join(f'{k}={v}' for k, v in settings.items())}\n",
    )
    csv_lines = [",".join(columns)] + [",".join(cell(row[c], 4, "") for c in columns) for row in rows]
    write_text_atomic(out / "summary.csv", "\n".join(csv_lines) + "\n")
    return table


# --------------------------------------------------------------------------- bench command


def bench_settings(args: argparse.Namespace, dtype) -> dict:
    settings = {name: getattr(args, name) for name in RESULT_OPTIONS}
    settings["pick_model"] = None if args.no_pick_score else args.pick_model
    settings["dtype"] = str(dtype).removeprefix("torch.")
    return settings


def bench_argv(args: argparse.Namespace) -> list[str]:
    """The command line (after ``flatten-video``) that gives ``args`` again, without ``--launcher``:
    what every process started by ``accelerate launch -m flatten_video.bench`` parses."""
    argv = ["--debug"] if getattr(args, "debug", False) else []
    options = []
    for action in args.bench_parser._actions:
        value = getattr(args, action.dest, None)
        if action.dest in ("help", "launcher", "num_processes"):
            continue
        if not action.option_strings:
            argv.append(str(value))
        elif value != action.default:
            flag = max(action.option_strings, key=len)  # the long form
            # --flag=value keeps values such as "" or "-blurry" from being read as options.
            if action.nargs == 0:
                options.append(flag)
            else:  # an appending option (--lora) gives a list: one flag per value
                options += [f"{flag}={item}" for item in (value if isinstance(value, list) else [value])]
    return argv + options


def relaunch_with_accelerate(args: argparse.Namespace) -> int:
    """Run this bench again as ``accelerate launch [--num_processes N] -m flatten_video.bench ...``."""
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if args.num_processes:
        command += ["--num_processes", str(args.num_processes)]
    command += ["-m", "flatten_video.bench", *bench_argv(args)]
    print(f"running: {shlex.join(command)}", file=sys.stderr)
    return subprocess.run(command).returncode


def run_bench(args: argparse.Namespace) -> int:
    if args.prompt is not None:
        raise BenchError("bench takes its prompts from the captions CSV; --prompt is for edit")
    EditSettings.from_namespace(args).check_options()
    if args.launcher == "accelerate":
        return relaunch_with_accelerate(args)
    from accelerate import PartialState

    if args.ablation:
        args.attention, args.variant = ABLATIONS[args.ablation]
    data_dir = pathlib.Path(args.data_dir)
    out = pathlib.Path(args.output) / (args.ablation or "")
    items = load_items(data_dir, find_csv(data_dir, args.csv))
    split = lambda text: [s.strip() for s in text.split(",") if s.strip()] if text else None  # noqa: E731
    items = select_items(items, split(args.subset), split(args.videos), split(args.edits), args.limit)
    if not items:
        raise BenchError("no item matches --subset/--videos/--edits")

    # cpu=True lets processes started by torchrun/accelerate on CPUs form a (gloo) group too.
    state = PartialState(cpu=args.device == "cpu")
    # Under accelerate each process has its own GPU; --device only applies to a single process.
    device = str(state.device) if state.num_processes > 1 else args.device or default_device()
    settings = bench_settings(args, resolve_dtype(args.dtype, device))
    mine = shard(items, state.process_index, state.num_processes)
    pending = [item for item in mine if not is_finished(out, item, settings)]
    if len(pending) < len(mine):
        print(f"skipping {len(mine) - len(pending)} finished item(s) in {out}", file=sys.stderr)
    failures = run_items(pending, args, settings, out, device, state.process_index)
    write_json_atomic(out / f"failures.rank{state.process_index}.json", failures)

    state.wait_for_everyone()
    if not state.is_main_process:
        return 1 if failures else 0
    failures = []
    for rank in range(state.num_processes):
        part = out / f"failures.rank{rank}.json"
        failures += json.loads(part.read_text())
        part.unlink()
    if failures:
        write_json_atomic(out / "failures.json", failures)
    else:
        (out / "failures.json").unlink(missing_ok=True)  # from an earlier run: those items are done now
    rows = summarize(out, settings)
    if rows:
        print(write_summary(out, rows, settings))
        print(f"wrote {out / 'summary.md'} and {out / 'summary.csv'}")
    if failures:
        print(f"flatten-video bench: {len(failures)} of {len(items)} item(s) failed (see {out / 'failures.json'}):", file=sys.stderr)
        for failure in failures:
            print(f"  {failure['error']}", file=sys.stderr)
        return 1
    return 0


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The edit options (shared with ``edit``, so they never drift) adapted to a dataset, plus bench's own."""
    add_edit_arguments(parser)
    changes = {
        "video": dict(dest="data_dir", metavar="DATA_DIR", help="LOVEU-TGVE-2023 folder: captions CSV and <subset>/480p_frames/<video>/"),
        "prompt": dict(required=False, default=None, help=argparse.SUPPRESS),  # prompts come from the CSV
        "output": dict(default="tgve-results", help="output folder (default: tgve-results)"),
        "width": dict(default=512, help="working width in pixels (default: 512, as in the paper)"),
        "height": dict(default=512, help="working height in pixels (default: 512, as in the paper)"),
        "side_by_side": dict(help="write source | edit side by side in the item videos"),
    }
    for action in parser._actions:  # argparse has no public way to change an added argument
        for name, value in changes.get(action.dest, {}).items():
            setattr(action, name, value)
    group = parser.add_argument_group("benchmark")
    group.add_argument("--csv", default=None, help="captions CSV (default: the one in DATA_DIR)")
    group.add_argument("--ablation", choices=tuple(ABLATIONS), default=None, help="a row of the paper's Table 2 (overrides --attention/--variant; results in OUT/<ablation>/)")
    group.add_argument("--subset", default=None, help="only these subsets, comma separated (e.g. DAVIS_480p)")
    group.add_argument("--videos", default=None, help="only these videos, comma separated")
    group.add_argument("--edits", default=None, help=f"only these edits, comma separated ({', '.join(EDITS)})")
    group.add_argument("--limit", type=int, default=None, help="at most N items (after the filters above)")
    group.add_argument("--fail-fast", action="store_true", help="stop at the first failing item")
    group.add_argument("--launcher", choices=("none", "accelerate"), default="none", help="accelerate: run on several GPUs via `accelerate launch`")
    group.add_argument("--num-processes", type=int, default=None, help="processes for --launcher accelerate (default: accelerate's config, else one per GPU)")
    add_metric_arguments(parser)


def register(subparsers) -> None:
    """Add the ``eval`` and ``bench`` subcommands to the ``flatten-video`` command line."""
    evaluate = subparsers.add_parser("eval", help="score an edited video against its source")
    add_eval_arguments(evaluate)
    evaluate.set_defaults(handler=run_eval)
    bench = subparsers.add_parser("bench", help="edit and score the LOVEU-TGVE-2023 benchmark")
    add_bench_arguments(bench)
    # bench_parser: bench_argv rebuilds the command line from it for accelerate's processes.
    bench.set_defaults(handler=run_bench, bench_parser=bench)


def main(argv: list[str] | None = None) -> int:
    """``python -m flatten_video.bench DATA_DIR [options]``: the bench command on its own.

    This is what ``accelerate launch -m flatten_video.bench`` runs in every process. It goes
    through the ``flatten-video`` command line, so errors are reported the same way.
    """
    from .cli import main as cli_main

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = ["--debug"] if "--debug" in argv else []
    return cli_main([*debug, "bench", *(a for a in argv if a != "--debug")])


if __name__ == "__main__":
    sys.exit(main())
