"""One video edit, from a source file to a written output, shared by the CLI, the web UI and the
benchmark: :func:`prepare_source` reads and checks everything before a model loads,
:func:`edit_video` runs the pipeline and writes the result atomically, and
:class:`InversionCache` keeps inversions so a new prompt on the same clip starts at sampling.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pathlib

import torch

from ..flow import ensure_raft_weights
from ..pipelines import FlattenInversion
from ..video import Video, VideoError, read_video, write_video
from .settings import EditSettings

logger = logging.getLogger(__name__)

OUTPUT_SUFFIXES = (".mp4", ".gif")


def check_writable(path: pathlib.Path) -> None:
    """Raise :class:`VideoError` before the long work if ``path`` cannot be written."""
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise VideoError(f"output must end in .mp4 or .gif: {path}")
    if path.is_dir():
        raise VideoError(f"output is a folder: {path}")
    folder = path.absolute().parent
    for parent in [folder, *folder.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise VideoError(f"cannot write {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK):
                raise VideoError(f"cannot write {path}: {parent} is not writable")
            break


def prepare_source(
    video: str | os.PathLike,
    settings: EditSettings,
    output: str | os.PathLike | None = None,
    require_prompt: bool = True,
    short_side: int = 512,
) -> Video:
    """Everything that can fail fast, before a model loads, in the order users fix them: the
    settings, the ``output`` path (when given), the source video at the working size, and RAFT's
    weights when the flow needs them. ``short_side``: the working size's short side when the
    settings give none (the model's training size: 512 for SD, 1024 for SDXL).

    Returns:
        The source :class:`~flatten_video.video.Video` at the working size.
    """
    settings.check(require_prompt)
    if output is not None:
        check_writable(pathlib.Path(output))
    clip = read_video(
        video, settings.frames, stride=settings.stride, width=settings.width, height=settings.height, crop=settings.crop,
        short_side=short_side,
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
            model=str(pipe.name_or_path), loras=pipe.loras, dtype=str(pipe.unet.dtype), shape=list(frames.shape),
            **settings.inversion_identity(),
        )
        digest.update(json.dumps(identity, sort_keys=True).encode())
        return self.folder / f"{digest.hexdigest()[:32]}.safetensors"

    def load(self, path: pathlib.Path) -> FlattenInversion | None:
        """The cached inversion, or None when there is none or it cannot be read (it is redone)."""
        if not path.exists():
            return None
        try:
            inversion = FlattenInversion.load(path)
        except ValueError as error:
            logger.warning("ignoring a damaged cached inversion: %s", error)
            return None
        logger.info("reusing the inversion in %s", path)
        return inversion

    def invert(self, pipe, frames: torch.Tensor, settings: EditSettings, generator: torch.Generator,
               save: bool = True) -> FlattenInversion:
        """The cached inversion of ``frames``, or a new one, kept for next time (when ``save``)."""
        entry = self.path(pipe, frames, settings)
        inversion = self.load(entry)
        if inversion is None:
            inversion = pipe.invert_video(frames, generator=generator, **settings.pipeline_kwargs(for_inversion=True))
            if save:
                inversion.save(entry)
        return inversion


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


def controlled(pipe, images: list[torch.Tensor] | None, settings: EditSettings):
    """A block in which ``pipe``'s ControlNets steer inversion (if asked) and sampling with the
    condition maps ``images`` (:func:`control_images`); nothing without ``--control``."""
    if not settings.control:
        return contextlib.nullcontext()
    return pipe.control_enabled(
        images, num_inference_steps=settings.steps,
        controlnet_conditioning_scale=settings.control_scale, control_guidance_start=settings.control_start,
        control_guidance_end=settings.control_end, control_inversion=settings.control_inversion,
        guess_mode=settings.guess_mode,
    )


def edit_video(
    pipe,
    video: str | os.PathLike,
    output: str | os.PathLike,
    settings: EditSettings,
    clip: Video | None = None,
    cache_dir: str | os.PathLike | None = None,
    write: bool = True,
    controls: list[torch.Tensor] | None = None,
) -> pathlib.Path:
    """Edit ``video`` with ``pipe`` (a :class:`~flatten_video.FlattenPipeline`) and write ``output``.

    Args:
        clip: the source already read by :func:`prepare_source` (read here when None).
        cache_dir: where inversions are kept and looked up (:class:`InversionCache`); None: no cache.
        write: write the output and the cache entry (False for the other processes of a run
            shared among several: the main one writes).
        controls: the condition maps of the ``--control`` options (:func:`control_images`,
            computed here when None).

    Returns:
        The path written (atomically: a partial file never appears at ``output``).
    """
    if clip is None:
        clip = prepare_source(video, settings, output)
    generator = torch.Generator(device="cpu").manual_seed(settings.seed)
    inversion = None
    if settings.control and controls is None:
        controls = control_images(clip, settings)
    with controlled(pipe, controls, settings):
        if cache_dir is not None:
            inversion = InversionCache(cache_dir).invert(pipe, clip.frames, settings, generator, save=write)
        result = pipe(clip.frames, generator=generator, inversion=inversion, output_type="pt", **settings.pipeline_kwargs())
    if not write:
        return pathlib.Path(output)
    return write_video(
        result.frames,
        output,
        fps=settings.fps or clip.fps,
        side_by_side=clip.frames if settings.side_by_side else None,
    )
