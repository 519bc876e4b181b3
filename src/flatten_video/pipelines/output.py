"""What the FLATTEN pipelines return."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput

from ..video import rgb_image

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded."""


@dataclass
class FlattenPipelineOutput(BaseOutput):
    """Output of the FLATTEN pipelines.

    Attributes:
        frames: the edited videos, batch first as diffusers' video pipelines return them, so that
            ``frames[0]`` is the (one) video: a list of lists of PIL images (``"pil"``), a
            (B, F, H, W, 3) float array in [0, 1] (``"np"``), a (B, F, 3, H, W) tensor in [0, 1]
            (``"pt"``), or the final latents (B, C, F', h, w) (``"latent"``); B = 1.
    """

    frames: list[list[PIL.Image.Image]] | np.ndarray | torch.Tensor


def frames_to_tensor(video) -> torch.Tensor:
    """A list of PIL images, a (F, H, W, 3) uint8/float array or a (F, 3, H, W) tensor in [0, 1]
    -> a (F, 3, H, W) float32 tensor in [0, 1]."""
    if isinstance(video, torch.Tensor):
        frames = video
    elif isinstance(video, np.ndarray):
        frames = torch.from_numpy(video).permute(0, 3, 1, 2)
    elif isinstance(video, (list, tuple)) and video and isinstance(video[0], PIL.Image.Image):
        frames = torch.from_numpy(np.stack([np.asarray(rgb_image(f)) for f in video])).permute(0, 3, 1, 2)
    else:
        raise ValueError("video must be a (F, 3, H, W) tensor, a (F, H, W, 3) array or a list of PIL images")
    if frames.dtype == torch.uint8:
        frames = frames.float() / 255
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"video must have shape (F, 3, H, W), got {tuple(frames.shape)}")
    frames = frames.float()
    if frames.numel() and not torch.isfinite(frames).all():
        raise ValueError("video holds NaN or infinite values")
    if frames.numel() and (frames.min() < -1e-3 or frames.max() > 1 + 1e-3):
        low, high = float(frames.min()), float(frames.max())
        hint = ": divide 0..255 frames by 255" if high > 2 else ""
        raise ValueError(f"video values must be in [0, 1], got {low:g}..{high:g}{hint}")
    return frames


def frames_to_output(videos: list[torch.Tensor], output_type: str):
    """Edited videos, each (F, 3, H, W) in [0, 1] or latents (1, C, F', h, w) for ``"latent"``,
    -> the batch-first form ``output_type`` names: [[PIL, ...], ...], (B, F, H, W, 3) array,
    (B, F, 3, H, W) tensor, or (B, C, F', h, w) latents."""
    if output_type == "latent":
        return torch.cat(videos)
    if output_type == "np":
        return np.stack([frames.permute(0, 2, 3, 1).numpy() for frames in videos])
    if output_type == "pil":
        arrays = [(frames.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8) for frames in videos]
        return [[PIL.Image.fromarray(frame) for frame in array] for array in arrays]
    return torch.stack(videos)


def prompt_list(prompt: str | list[str], negative_prompt: str | list[str] = "") -> list[tuple[str, str]]:
    """(prompt, negative prompt) of each video a call edits: one prompt, or a list of them (each
    edited from the one start), with one negative prompt for all or one each."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompt must be a string or a non-empty list of strings")
    negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
    if len(negatives) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts and {len(negatives)} negative prompts: give one negative prompt, or one each")
    return list(zip(prompts, negatives))
