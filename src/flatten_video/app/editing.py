"""Video edits, from a source file to written outputs, shared by the CLI, the web UI and the
benchmark: :func:`prepare_source` reads and checks everything before a model loads,
:func:`edit_prompts` inverts the source once and writes one result per prompt (atomically), and
:class:`InversionCache` keeps inversions so a new prompt on the same clip starts at sampling.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from ..flow import ensure_raft_weights
from ..pipelines import EditStart
from ..pipelines.mixin import FlattenMixin
from ..timing import timed
from ..video import Video, VideoError, read_video, write_video
from .errors import error_line
from .settings import EditSettings

logger = logging.getLogger(__name__)

OUTPUT_SUFFIXES = (".mp4", ".gif")


def check_writable(path: pathlib.Path, source: str | os.PathLike | None = None) -> None:
    """Raise :class:`VideoError` before the long work if ``path`` cannot be written, or would
    overwrite the ``source`` being read (the same file, through links too, or a file inside the
    source's frame folder)."""
    if source is not None:
        source_path, target = pathlib.Path(source).resolve(), path.resolve()
        if source_path.is_dir() and (target == source_path or source_path in target.parents):
            raise VideoError(f"the output {path} is inside the frame folder being read ({source}); write it elsewhere")
        if target == source_path or (target.exists() and source_path.exists() and os.path.samefile(target, source_path)):
            raise VideoError(f"the output {path} is the source video; choose another output name")
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise VideoError(f"output must end in .mp4 or .gif: {path}")
    if path.is_dir():
        raise VideoError(f"output is a folder: {path}")
    check_creatable(path.absolute().parent, f"cannot write {path}")


def check_cache_dir(folder: str | os.PathLike) -> None:
    """Raise :class:`VideoError` if inversions cannot be kept in ``folder`` (a file, or not writable)."""
    check_creatable(pathlib.Path(folder).absolute(), f"cannot keep inversions in {folder}")


def check_creatable(folder: pathlib.Path, action: str) -> None:
    """Raise :class:`VideoError` (``action``: reason) unless ``folder`` exists or can be made: the
    nearest existing folder at or above it must be a writable folder."""
    for parent in [folder, *folder.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise VideoError(f"{action}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK):
                raise VideoError(f"{action}: {parent} is not writable")
            return


def prepare_source(
    video: str | os.PathLike,
    settings: EditSettings,
    output: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    require_prompt: bool = True,
    pipeline=None,
    cache_dir: str | os.PathLike | None = None,
) -> Video:
    """Everything that can fail fast, before a model loads, in the order users fix them: the
    settings, the ``output`` path or paths (when given: writable, distinct, none of them the
    source), the inversion ``cache_dir``, the source video at the working size, and RAFT's
    weights when the flow needs them. ``pipeline``: the pipeline class that will edit it, whose
    training size (``default_short_side``: 512 for SD, 1024 for SDXL, 480 for Wan) and
    ``size_multiple`` give the working size when the settings give none (default: SD's).

    Returns:
        The source :class:`~flatten_video.video.Video` at the working size.
    """
    settings.check(require_prompt)
    outputs = [] if output is None else [output] if isinstance(output, (str, os.PathLike)) else list(output)
    for path in outputs:
        check_writable(pathlib.Path(path), video)
    seen = {}
    for path in outputs:
        key = pathlib.Path(path).resolve()
        if key in seen:
            raise VideoError(f"two edits would write the same file {path}; give each its own output name")
        seen[key] = path
    if cache_dir is not None:
        check_cache_dir(cache_dir)
    pipeline = pipeline or FlattenMixin
    clip = read_video(
        video, settings.frames, stride=settings.stride, width=settings.width, height=settings.height, crop=settings.crop,
        short_side=pipeline.default_short_side, size_multiple=pipeline.size_multiple,
    )
    if settings.flow == "raft" and settings.uses_flow:
        ensure_raft_weights()
    return clip


class InversionCache:
    """Inversions kept on disk, one safetensors file per source and inversion settings.

    A later edit of the same clip with the same model and settings, whatever its prompt, loads
    the inversion instead of running optical flow, VAE encoding and inversion again (about a
    third of an edit's work); a run that crashed while sampling resumes from it. Entries are
    about 1 MB per injected step at 512x512 (the source latents), not the features.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = pathlib.Path(folder)

    def path(self, pipe, frames: torch.Tensor, settings: EditSettings) -> pathlib.Path:
        """The entry for ``frames`` (F, 3, H, W) inverted by ``pipe`` with ``settings``."""
        digest = hashlib.sha256(frames.float().cpu().contiguous().numpy().tobytes())
        # Everything that changes the inversion, and nothing else: prompts and guidance do not.
        identity = dict(
            model=str(pipe.name_or_path), loras=pipe.loras, dtype=str(pipe.backbone.dtype), shape=list(frames.shape),
            attention_backend=pipe.attention_backend,
            **settings.inversion_identity(),
        )
        digest.update(json.dumps(identity, sort_keys=True).encode())
        return self.folder / f"{digest.hexdigest()[:32]}.safetensors"

    #: Seconds a run waits for another that is inverting the same clip and settings.
    LOCK_TIMEOUT = 3600.0

    @contextlib.contextmanager
    def locked(self, path: pathlib.Path, timeout: float | None = None):
        """Hold the entry's lock file while it is looked up and made, so that two runs on one clip
        invert once: the second waits (up to ``timeout`` s, default :attr:`LOCK_TIMEOUT`) and then
        finds the entry. A lock that cannot be had or made is a warning, never a failure."""
        from filelock import FileLock, Timeout

        lock = FileLock(str(path.with_suffix(".lock")))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                logger.info("another run is inverting this clip with these settings; waiting for its inversion")
                lock.acquire(timeout=self.LOCK_TIMEOUT if timeout is None else timeout)
        except (Timeout, OSError) as error:
            logger.warning("inverting without the cache's lock (%s)", error_line(error) or "timed out")
            yield
            return
        try:
            yield
        finally:
            lock.release()
            # Leave no lock files behind. A run already waiting on this one goes on holding the
            # removed file, and one that comes now makes a new file: at worst two invert at once,
            # which costs time, never an entry (each entry is written atomically).
            pathlib.Path(lock.lock_file).unlink(missing_ok=True)

    def load(self, path: pathlib.Path, frames: torch.Tensor | None = None, pipe=None) -> EditStart | None:
        """The cached inversion, or None when there is none or it cannot be used (it is redone and
        replaced): unreadable, latents that are not finite, or shapes that disagree with its own
        settings or with the ``frames`` (F, 3, H, W) that ``pipe`` would invert."""
        if not path.exists():
            return None
        try:
            inversion = EditStart.load(path)
            check_start(inversion, frames, pipe)
        except ValueError as error:
            logger.warning("ignoring a damaged cached inversion (it is made again): %s", error)
            return None
        logger.info("reusing the cached inversion of this clip and settings (no flow or inversion to run): %s", path)
        return inversion



def check_start(start: EditStart, frames: torch.Tensor | None = None, pipe=None) -> None:
    """``ValueError`` unless ``start`` can be sampled from: finite latents (1, C, F', h, w), source
    latents of its shape, and, given the ``frames`` ``pipe`` would invert, the latent shape they
    make."""
    latents = start.latents
    if latents.ndim != 5 or latents.shape[0] != 1:
        raise ValueError(f"its latents have the shape {tuple(latents.shape)}, not (1, C, F', h, w)")
    for name, tensor in [("latents", latents), *((f"source latents at {t}", v) for t, v in
                                                 getattr(start, "source_latents", {}).items())]:
        if tensor.shape != latents.shape:
            raise ValueError(f"its {name} have the shape {tuple(tensor.shape)}, its latents {tuple(latents.shape)}")
        if not torch.isfinite(tensor).all():
            raise ValueError(f"its {name} hold NaN or infinite values")
    if frames is not None and pipe is not None:
        backbone = pipe.backbone
        expected = (1, backbone.in_channels, backbone.num_latent_frames(len(frames)),
                    *backbone.latent_size(*frames.shape[-2:]))
        if tuple(latents.shape) != expected:
            raise ValueError(f"its latents have the shape {tuple(latents.shape)}; these frames make {expected}")


def control_images(clip: Video, settings: EditSettings) -> list[torch.Tensor]:
    """The condition maps of every ``--control``, (F, 3, H, W) in [0, 1] at the clip's frames and size:
    read from its ``--control-video`` when it has one, else computed from the source."""
    from ..control_maps import control_maps

    images = []
    count, (height, width) = len(clip.frames), clip.frames.shape[-2:]
    for index, (kind, _) in enumerate(settings.controls):
        if index < len(settings.control_video):
            path = settings.control_video[index]
            total = read_video(path, 1, width=width, height=height).total_frames
            # Frame for frame with the source clip, or exactly the edited frames.
            if total not in (clip.total_frames, count):
                raise VideoError(
                    f"the condition video {path} has {total} frames: give one with the source's {clip.total_frames} "
                    f"frames or the {count} edited ones"
                )
            stride = clip.stride if total == clip.total_frames else 1
            maps = read_video(path, count, stride=stride, width=width, height=height).frames
        else:
            maps = control_maps(clip.frames, kind, settings.canny_low, settings.canny_high)
        images.append(maps)
    return images


def control_kwargs(images: list[torch.Tensor] | None, settings: EditSettings) -> dict:
    """The ControlNet arguments of ``invert_video`` and the pipeline call, with the condition maps
    ``images`` (:func:`control_images`); none without ``--control``."""
    if not settings.control:
        return {}
    return dict(
        control_image=images, controlnet_conditioning_scale=settings.control_scale,
        control_guidance_start=settings.control_start, control_guidance_end=settings.control_end,
        control_inversion=settings.control_inversion, guess_mode=settings.guess_mode,
    )


def audio_source(clip: Video, settings: EditSettings, outputs: Sequence[str | os.PathLike]) -> pathlib.Path | None:
    """The file whose audio goes with the edits: the source's, when it has some and the edits keep
    its timing (every frame, at its fps) in mp4 files; else None, with one line saying why when
    there was audio to keep."""
    if clip.audio is None or settings.no_audio:
        return None
    why = None
    if clip.stride != 1:
        why = f"the edit takes one source frame in {clip.stride} (--stride {clip.stride}), so its timing is not the source's"
    elif settings.fps is not None and abs(settings.fps - clip.fps) > 1e-6:
        why = f"--fps {settings.fps:g} changes the timing of the source's {clip.fps:g} fps"
    elif any(pathlib.Path(output).suffix.lower() != ".mp4" for output in outputs):
        why = "GIF files hold no audio"
    if why:
        logger.info("the source's audio is not kept: %s", why)
        return None
    return clip.audio


def check_finite_frames(frames: torch.Tensor, pipe) -> None:
    """Refuse to write a video of NaNs (black frames): half precision overflowing, or a guidance
    scale so large the latents blow up."""
    if not torch.isfinite(frames).all():
        hint = "try --dtype bfloat16 or float32, or " if pipe.backbone.dtype == torch.float16 else ""
        raise ValueError(f"the edit came out as NaN or infinite values, so nothing was written; {hint}lower --guidance")


def slug(text: str, limit: int = 40) -> str:
    """A file-name part from a prompt: 'A white fox, watercolor' -> 'a-white-fox-watercolor'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "edit"


def prompt_outputs(template: str | os.PathLike, prompts: Sequence[str]) -> list[pathlib.Path]:
    """One output path per prompt from ``template``, which may hold ``{prompt}`` (the prompt's
    :func:`slug`) and ``{index}`` (1, 2, ...). Several prompts need a placeholder that tells
    their outputs apart; equal slugs get their index appended.

    Raises:
        ValueError: several prompts and no placeholder, or a placeholder Python cannot format.
    """
    template = str(template)
    if len(prompts) > 1 and "{prompt}" not in template and "{index}" not in template:
        raise ValueError(f"{len(prompts)} prompts need one output each: put {{prompt}} or {{index}} in the output name ({template})")
    slugs = [slug(p) for p in prompts]
    paths = []
    for index, (prompt_slug, prompt) in enumerate(zip(slugs, prompts, strict=True), start=1):
        if slugs.count(prompt_slug) > 1 and "{index}" not in template:
            prompt_slug = f"{prompt_slug}-{index}"
        try:
            paths.append(pathlib.Path(template.format(prompt=prompt_slug, index=index)))
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(f"the output name {template} may hold only {{prompt}} and {{index}} ({error_line(error)})") from None
    return paths


@dataclass
class PromptEdit:
    """One prompt's outcome in :func:`edit_prompts`.

    Attributes:
        index: its rank among the prompts, from 0.
        prompt: the prompt.
        output: the file written (or that would have been).
        error: why it failed, None when it was written.
        frames: the edited frames, (F, 3, H, W) in [0, 1] (the source not beside them), for
            other renderings of the same edit without decoding the file again.
        timings: seconds of its ``sample``, ``decode`` and ``write`` stages.
    """

    index: int
    prompt: str
    output: pathlib.Path
    error: BaseException | None = None
    frames: torch.Tensor | None = None
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


def invert_source(pipe, clip: Video, settings: EditSettings, cache_dir: str | os.PathLike | None = None,
                  write: bool = True, flows: torch.Tensor | None = None,
                  controls: list[torch.Tensor] | None = None) -> EditStart:
    """The start every prompt of an edit samples from (the paper's method: the inversion): from
    ``cache_dir`` when it holds one for these frames, model and settings, else made now (and kept
    there when ``write``). ``flows``: the source's forward flows when already estimated;
    ``controls``: the condition maps of the ``--control`` options (:func:`control_images`)."""
    def invert() -> EditStart:
        generator = torch.Generator(device="cpu").manual_seed(settings.seed)
        return pipe.invert_video(clip.frames, generator=generator, flows=flows,
                                 **settings.pipeline_kwargs(for_inversion=True), **control_kwargs(controls, settings))

    if cache_dir is None:
        return invert()
    cache = InversionCache(cache_dir)
    entry = cache.path(pipe, clip.frames, settings)
    with cache.locked(entry):  # a run inverting the same clip and settings: wait for its entry
        inversion = cache.load(entry, clip.frames, pipe)
        if inversion is None:
            inversion = invert()
            if write:
                try:
                    inversion.save(entry)
                except Exception as error:  # noqa: BLE001 - a cache is optional: a full disk must not end the edit
                    logger.warning("the inversion was not cached (the edit goes on): %s", error_line(error))
    return inversion


def edit_prompts(
    pipe,
    video: str | os.PathLike,
    outputs: Sequence[str | os.PathLike],
    settings: EditSettings,
    prompts: Sequence[str],
    clip: Video | None = None,
    cache_dir: str | os.PathLike | None = None,
    write: bool = True,
    controls: list[torch.Tensor] | None = None,
    on_prompt: Callable[[int, str], None] | None = None,
    callback_on_step_end: Callable | None = None,
    inversion: EditStart | None = None,
) -> Iterator[PromptEdit]:
    """Edit ``video`` once per prompt from one inversion, yielding each outcome as it is written.

    Flow, VAE encoding and inversion do not depend on the prompt, so they run once; each prompt
    then costs only its sampling and decoding, and gives the same video as an edit of that prompt
    alone (its sampling is seeded with ``settings.seed`` afresh). A prompt that fails is yielded
    with its error and the next one runs; the caller decides what a failure means.

    Args:
        outputs: one path per prompt (:func:`prompt_outputs`).
        settings: every option but the prompt, which ``prompts`` gives.
        clip: the source already read by :func:`prepare_source` (read here when None).
        cache_dir: where inversions are kept and looked up (:class:`InversionCache`); None: no cache.
        write: write the outputs and the cache entry (False for the other processes of a run
            shared among several: the main one writes).
        controls: the condition maps of the ``--control`` options (:func:`control_images`,
            computed here when None).
        on_prompt: called with (index, prompt) before each prompt's sampling, for progress.
        callback_on_step_end: given to the pipeline call of every prompt (diffusers' signature);
            an exception it raises ends that prompt, e.g. to stop an edit from a web page.
        inversion: the start made already (:func:`invert_source`), for callers that time or
            share it; made here when None.
    """
    if len(outputs) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts and {len(outputs)} outputs: give one output per prompt")
    if clip is None:
        clip = prepare_source(video, dataclasses.replace(settings, prompt=prompts[0] if prompts else ""), outputs)
    if settings.control and controls is None:
        controls = control_images(clip, settings)
    device, control = pipe._execution_device, control_kwargs(controls, settings)
    audio = audio_source(clip, settings, outputs) if write else None
    if inversion is None:
        inversion = invert_source(pipe, clip, settings, cache_dir, write, controls=controls)
    for index, (prompt, output) in enumerate(zip(prompts, outputs, strict=True)):
        if on_prompt is not None:
            on_prompt(index, prompt)
        timings: dict[str, float] = {}
        try:
            generator = torch.Generator(device="cpu").manual_seed(settings.seed)
            kwargs = dataclasses.replace(settings, prompt=prompt).sampling_kwargs()
            with timed(timings, "sample", device):
                latents = pipe(clip.frames, generator=generator, inversion=inversion, output_type="latent",
                               callback_on_step_end=callback_on_step_end, **kwargs, **control).frames
            with timed(timings, "decode", device):
                frames = pipe.decode_latents(latents)
            check_finite_frames(frames, pipe)
            written = pathlib.Path(output)
            if write:
                with timed(timings, "write", device):
                    written = write_video(frames, output, fps=settings.fps or clip.fps, audio=audio,
                                          side_by_side=clip.frames if settings.side_by_side else None)
        except Exception as error:  # noqa: BLE001 - reported per prompt; the others still run
            yield PromptEdit(index, prompt, pathlib.Path(output), error)
            continue
        yield PromptEdit(index, prompt, written, frames=frames, timings=timings)
