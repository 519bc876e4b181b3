"""Scoring edits and running the LOVEU-TGVE-2023 benchmark: ``flatten-video eval`` and ``bench``.

``eval EDITED SOURCE --prompt TEXT`` scores one edit with :func:`flatten_video.eval.metrics.evaluate_video`.

``bench DATA_DIR`` edits every (video, edit prompt) of a LOVEU-TGVE-2023 folder
(:mod:`~flatten_video.eval.dataset`) and writes, under the output folder (``OUT/<ablation>/`` with
``--ablation``), one record per item (:mod:`~flatten_video.eval.records`), ``summary.md`` and
``summary.csv`` (:mod:`~flatten_video.eval.summary`), and ``failures.json`` when items failed.

Each source video is read, its flow computed and inverted once; its edit prompts are then sampled
from the same :class:`~flatten_video.FlattenInversion` (sampling does not change it). A rerun skips
items whose record holds the same settings, so an interrupted run resumes where it stopped. Under
``accelerate launch`` videos are sharded across processes and the main process writes the summary
from the records on disk.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import pathlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import groupby

from ..app.editing import control_images, edit_prompts, invert_source, prepare_source
from ..app.errors import error_line
from ..app.runtime import check_runtime, default_device, load_pipeline, pipeline_class, resolve_dtype
from ..app.settings import EditSettings, RuntimeSettings
from ..flow import estimate_flow
from ..timing import timed
from ..video import Video, read_video
from .dataset import BenchError, Item, find_csv, load_items, select_items, shard, split_name
from .metrics import MetricModelError, evaluate_video, load_clip
from .options import ABLATIONS, FRAME_PAIRS, METRIC_OPTIONS
from .records import finite_or_none, is_finished, item_path, write_json_atomic
from .summary import METRICS, summarize, write_summary

# --------------------------------------------------------------------------- metrics options (eval and bench)


def metric_options(args: argparse.Namespace) -> dict:
    """Keyword arguments of :func:`~flatten_video.eval.metrics.evaluate_video` from the metric options."""
    return dict(
        clip_model=args.clip_model,
        pick_model=None if args.no_pick_score else args.pick_model,
        pick_processor=args.pick_processor,
        frame_pairs=args.frame_pairs,
    )


def load_metric_models(args: argparse.Namespace, device: str) -> dict:
    """:func:`metric_options` with the CLIP and PickScore models loaded on ``device``.

    ``bench`` calls it before the first edit, so a model that cannot be loaded stops the run in
    one line instead of failing every item after its edit.
    """
    options = metric_options(args)
    for key, flag, processor in (("clip_model", "--clip-model", None), ("pick_model", "--pick-model", "pick_processor")):
        if options[key] is None:
            continue
        try:
            options[key] = load_clip(options[key], options.get(processor) if processor else None, device=device)
        except MetricModelError as error:
            raise BenchError(f"cannot load the metrics model of {flag}, so nothing was edited: {error}") from error
    return options


# --------------------------------------------------------------------------- eval


def run_eval(args: argparse.Namespace) -> int:
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
            frame_pairs=args.frame_pairs, scores=finite_or_none(table), scores_raw=finite_or_none(scores.as_dict()),
        )
        print(json.dumps(record, indent=2))
    else:
        for key, name, unit in METRICS:
            value = table[key]
            note = f", over {FRAME_PAIRS[args.frame_pairs]}" if key == "clip_f" else ""
            print(f"{name:<10} {'n/a' if value is None else f'{value:.2f}':>8}   {unit}{note}")
    return 0


# --------------------------------------------------------------------------- running


@dataclass
class PreparedVideo:
    """A source video ready for its edits: the clip, its start (inversion), its flows for Ewarp."""

    clip: Video
    inversion: object  # flatten_video.EditStart
    flows: tuple
    timings: dict
    controls: list | None = None  # the condition maps of the --control options


def prepare_video(pipe, item: Item, settings: EditSettings, device: str) -> PreparedVideo:
    """Read, flow and invert a source video: once per video, for all its edits, as ``edit``
    inverts (:func:`~flatten_video.app.editing.invert_source`)."""
    timings: dict[str, float] = {}
    with timed(timings, "read", device):
        clip = prepare_source(item.frames_dir, settings, require_prompt=False, pipeline=type(pipe))
    with timed(timings, "flow", device):
        # Ewarp needs the source's forward and backward flow; both are the same for every edit
        # of the video, so they are computed here once (backward = forward of the reversed clip).
        options = dict(method=settings.flow, device=device, progress=False)
        flows = (estimate_flow(clip.frames, **options), estimate_flow(clip.frames.flip(0), **options).flip(0))
    controls = control_images(clip, settings) if settings.control else None
    inversion = invert_source(pipe, clip, settings, flows=flows[0], controls=controls)
    return PreparedVideo(clip, inversion, flows, {**timings, **inversion.timings}, controls)


def run_video(pipe, video: PreparedVideo, items: list[Item], metrics: dict, settings: EditSettings,
              record_settings: dict, out: pathlib.Path, device: str) -> Iterator[tuple[Item, BaseException | None]]:
    """Edit, write and score each of a video's items through the edit route every command takes
    (:func:`~flatten_video.app.editing.edit_prompts`: sampling, decoding, the NaN check, the
    atomic write), yielding (item, its error or None). An item's JSON is written last, marking it
    finished."""
    paths = [item_path(out, item) for item in items]
    edits = edit_prompts(pipe, items[0].frames_dir, [path.with_suffix(".mp4") for path in paths], settings,
                         [item.prompt for item in items], clip=video.clip, controls=video.controls,
                         inversion=video.inversion)
    clip = video.clip
    for item, path, edit in zip(items, paths, edits, strict=True):
        if not edit.ok:
            yield item, edit.error
            continue
        timings = dict(edit.timings)
        try:
            with timed(timings, "metrics", device):
                scores = evaluate_video(edit.frames, clip.frames, item.prompt, flows=video.flows, device=device, **metrics)
            record = dict(
                subset=item.subset, video=item.video, edit=item.edit, split=split_name(item.subset),
                prompt=item.prompt, source_caption=item.caption, settings=record_settings,
                scores=finite_or_none(scores.to_table_units()), scores_raw=finite_or_none(scores.as_dict()),
                timings=dict(video=video.timings, **timings), output=edit.output.name,
                frames=dict(count=len(clip.frames), stride=clip.stride, total=clip.total_frames, width=clip.size[0],
                            height=clip.size[1], fps=clip.fps),
                device=device, finished=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            )
            write_json_atomic(path, record)
        except Exception as error:  # a metric that fails on this edit: the next one may score
            yield item, error
            continue
        yield item, None


def run_items(items: list[Item], args, settings: EditSettings, record_settings: dict, out: pathlib.Path,
              device: str, rank: int = 0) -> list[dict]:
    """Run the pending items of this process, video by video; returns the failures.

    An item that fails is reported and the others go on, unless ``--fail-fast``. Failing to load
    a metrics model or the Stable Diffusion model is fatal (nothing could run) and raises, before
    any edit.
    """
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

    metrics = load_metric_models(args, device)  # first: smaller than Stable Diffusion, and as needed
    runtime = RuntimeSettings.from_namespace(args)
    pipe = load_pipeline(runtime.model, device, resolve_dtype(runtime.dtype, device), runtime.lora, runtime.lora_scale,
                         settings.controls, runtime.model_config, runtime.attention_backend, runtime.compile)
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
            try:
                video = prepare_video(pipe, runnable[0], settings, device)
            except Exception as error:  # bad frames, too few frames, out of memory...: the video's items fail
                for item in runnable:
                    fail(item, error)
                    bar.update()
                continue
            bar.set_postfix_str(runnable[0].name)
            # An item that fails (out of memory while sampling, say) is reported; the next may fit.
            for item, error in run_video(pipe, video, runnable, metrics, settings, record_settings, out, device):
                if error is not None:
                    fail(item, error)
                bar.update()
            del video  # frees the stored features before the next video's inversion
    return failures


# --------------------------------------------------------------------------- bench command


def record_settings(args: argparse.Namespace, settings: EditSettings, dtype) -> dict:
    """Everything that decides an item's result, as recorded in its JSON: a finished item is redone
    when one of them changes."""
    runtime = RuntimeSettings.from_namespace(args)
    record = dict(model=runtime.model, lora=runtime.lora, lora_scale=runtime.lora_scale,
                  attention_backend=runtime.attention_backend, **settings.result_identity())
    record.update({name: getattr(args, name) for name in METRIC_OPTIONS})
    record["pick_model"] = None if args.no_pick_score else args.pick_model
    record["dtype"] = str(dtype).removeprefix("torch.")
    return record


def run_bench(args: argparse.Namespace) -> int:
    settings = EditSettings.from_namespace(args, pipeline_class(args.model).family)
    if args.ablation:
        attention, variant = ABLATIONS[args.ablation]
        settings = dataclasses.replace(settings, attention=attention, variant=variant)
    settings.check(require_prompt=False)
    from accelerate import PartialState

    data_dir = pathlib.Path(args.data_dir)
    out = pathlib.Path(args.output) / (args.ablation or "")
    items = load_items(data_dir, find_csv(data_dir, args.csv))
    split = lambda text: [s.strip() for s in text.split(",") if s.strip()] if text else None  # noqa: E731
    items = select_items(items, split(args.subset), split(args.videos), split(args.edits), args.limit)
    if not items:
        raise BenchError("no item matches --subset/--videos/--edits")
    check_runtime(RuntimeSettings.from_namespace(args), settings)  # the machine, the model and its plug-ins, before any work

    # cpu=True lets processes started by torchrun/accelerate on CPUs form a (gloo) group too.
    state = PartialState(cpu=args.device == "cpu")
    # Under accelerate each process has its own GPU; --device only applies to a single process.
    device = str(state.device) if state.num_processes > 1 else args.device or default_device()
    recorded = record_settings(args, settings, resolve_dtype(args.dtype, device))
    mine = shard(items, state.process_index, state.num_processes)
    pending = [item for item in mine if not is_finished(out, item, recorded)]
    if len(pending) < len(mine):
        print(f"skipping {len(mine) - len(pending)} finished item(s) in {out}", file=sys.stderr)
    failures = run_items(pending, args, settings, recorded, out, device, state.process_index)
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
    rows = summarize(out, recorded)
    if rows:
        print(write_summary(out, rows, recorded))
        print(f"wrote {out / 'summary.md'} and {out / 'summary.csv'}")
    if failures:
        print(f"flatten-video bench: {len(failures)} of {len(items)} item(s) failed (see {out / 'failures.json'}):", file=sys.stderr)
        for failure in failures:
            print(f"  {failure['error']}", file=sys.stderr)
        return 1
    return 0
