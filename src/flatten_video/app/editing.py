"""One video edit, from a source file to a written output: shared by the CLI and the web UI.

:class:`EditSettings` holds every option of an edit with the paper's defaults and checks them
before any model loads; :func:`edit_video` reads the source, runs a :class:`FlattenPipeline` and
writes the result atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
from dataclasses import dataclass

import torch

from .context import ATTENTION_MODES, FLATTEN_VARIANTS, FLOW_GUIDED_MODES
from .features import FEATURE_MODES
from .flow import FLOW_METHODS, ensure_raft_weights
from .pipeline import FlattenInversion
from .video import VideoError, read_video, write_video

logger = logging.getLogger(__name__)

OUTPUT_SUFFIXES = (".mp4", ".gif")


@dataclass
class EditSettings:
    """Every option of one edit; the defaults are the paper's (DESIGN.md 1.5-1.7).

    Attributes:
        prompt, negative_prompt: the edit, and the unconditional branch of guidance.
        frames, stride: frames to edit, and source frames between them (None: total // frames).
        width, height, crop: working size in pixels (None: short side 512, aspect kept, multiples
            of 64); ``crop`` center-crops to the working aspect instead of stretching.
        steps, inversion_steps, inject_steps: DDIM sampling steps, inversion steps, and sampling
            steps that get the source features.
        guidance, seed: classifier-free guidance scale and random seed.
        flow: ``"raft"`` or ``"dis"``.
        attention, variant: self-attention mode and flow-guided attention variant (ablations).
        feature_mode: how source features are held (``"auto"``, ``"stored"``, ``"recompute"``).
        fps: output frame rate (None: the sampled source's).
        side_by_side: write source and edit side by side.
    """

    prompt: str
    negative_prompt: str = ""
    frames: int = 32
    stride: int | None = None
    width: int | None = None
    height: int | None = None
    crop: bool = False
    steps: int = 50
    inversion_steps: int = 100
    inject_steps: int = 40
    guidance: float = 10.0
    seed: int = 66
    flow: str = "raft"
    attention: str = "dsta+flatten"
    variant: str = "II"
    feature_mode: str = "auto"
    fps: float | None = None
    side_by_side: bool = False

    @classmethod
    def from_namespace(cls, namespace) -> "EditSettings":
        """Settings from an object with attributes of the same names (argparse's namespace)."""
        return cls(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls)})

    def check(self) -> None:
        """Raise ``ValueError`` on settings that cannot work, naming the option."""
        if not self.prompt or not self.prompt.strip():
            raise ValueError("the prompt is empty: say what the edited video should show")
        self.check_options()

    def check_options(self) -> None:
        """:meth:`check` without the prompt (the benchmark takes its prompts from a CSV)."""
        for name in ("frames", "steps", "inversion_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{_option(name)} must be at least 1, got {getattr(self, name)}")
        if self.frames < 2:
            raise ValueError(f"{_option('frames')} must be at least 2: FLATTEN follows motion between frames")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"{_option('stride')} must be at least 1, got {self.stride}")
        if not 0 <= self.inject_steps <= self.steps:
            raise ValueError(
                f"{_option('inject_steps')} must be between 0 and {_option('steps')} ({self.steps}), got {self.inject_steps}"
            )
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and (value < 8 or value % 8):
                raise ValueError(f"{_option(name)} must be a positive multiple of 8, got {value}")
        for name, allowed in (
            ("flow", FLOW_METHODS),
            ("attention", ATTENTION_MODES),
            ("variant", FLATTEN_VARIANTS),
            ("feature_mode", FEATURE_MODES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{_option(name)} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"{_option('fps')} must be positive, got {self.fps}")

    @property
    def uses_flow(self) -> bool:
        """Whether the attention mode needs optical flow (and so RAFT weights for ``"raft"``)."""
        return self.attention in FLOW_GUIDED_MODES


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


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


def prepare_edit(video: str | os.PathLike, output: str | os.PathLike, settings: EditSettings):
    """Everything that can fail fast, before a model loads: settings, output, source, weights.

    Returns:
        The source :class:`~flatten_video.video.Video` at the working size.
    """
    settings.check()
    check_writable(pathlib.Path(output))
    clip = read_video(
        video, settings.frames, stride=settings.stride, width=settings.width, height=settings.height, crop=settings.crop
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
            **{name: getattr(settings, name) for name in INVERSION_SETTINGS},
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


# The settings an inversion depends on (the seed through the VAE sample and the trajectories).
INVERSION_SETTINGS = ("steps", "inversion_steps", "inject_steps", "seed", "flow", "attention", "variant")


def _pipeline_options(settings: EditSettings) -> dict:
    """The keyword arguments of both ``pipe.invert_video`` and ``pipe(...)`` that settings fix."""
    return dict(
        num_inference_steps=settings.steps,
        num_inversion_steps=settings.inversion_steps,
        inject_steps=settings.inject_steps,
        flow_method=settings.flow,
        attention_mode=settings.attention,
        flatten_variant=settings.variant,
        feature_mode=settings.feature_mode,
    )


def edit_video(
    pipe,
    video: str | os.PathLike,
    output: str | os.PathLike,
    settings: EditSettings,
    clip=None,
    cache_dir: str | os.PathLike | None = None,
) -> pathlib.Path:
    """Edit ``video`` with ``pipe`` (a :class:`~flatten_video.FlattenPipeline`) and write ``output``.

    Args:
        clip: the source already read by :func:`prepare_edit` (read here when None).
        cache_dir: where inversions are kept and looked up (:class:`InversionCache`); None: no cache.

    Returns:
        The path written (atomically: a partial file never appears at ``output``).
    """
    if clip is None:
        clip = prepare_edit(video, output, settings)
    generator = torch.Generator(device="cpu").manual_seed(settings.seed)
    options = _pipeline_options(settings)
    inversion = None
    if cache_dir is not None:
        cache = InversionCache(cache_dir)
        entry = cache.path(pipe, clip.frames, settings)
        inversion = cache.load(entry)
        if inversion is None:
            inversion = pipe.invert_video(clip.frames, generator=generator, **options)
            inversion.save(entry)
    result = pipe(
        clip.frames,
        prompt=settings.prompt,
        negative_prompt=settings.negative_prompt,
        guidance_scale=settings.guidance,
        generator=generator,
        inversion=inversion,
        output_type="pt",
        **options,
    )
    return write_video(
        result.frames,
        output,
        fps=settings.fps or clip.fps,
        side_by_side=clip.frames if settings.side_by_side else None,
    )
