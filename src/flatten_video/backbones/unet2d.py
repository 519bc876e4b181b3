"""The 2-D U-Net backbone: Stable Diffusion 1.x / 2.x / XL (docs/architecture.md).

The image U-Net runs on video with frames folded into its batch, ``(B*F, C, h, w)`` video-major
(an inflated 1x3x3 convolution is the 2-D one per frame); FLATTEN's processors and video-wide
GroupNorms unfold them per video (:mod:`flatten_video.models.install`). The VAE is an image VAE,
so latent frames are source frames (temporal factor 1). Flow-guided attention runs at U-Net
levels: level 0 is the latent grid, each level halves it.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..models.context import FlattenContext
from ..models.injection import InjectionSpec
from ..models.install import flatten_installed
from .base import Backbone, register_backbone


def fold_frames(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, F, h, w) -> (B*F, C, h, w), video-major."""
    videos, channels, frames, h, w = latents.shape
    return latents.permute(0, 2, 1, 3, 4).reshape(videos * frames, channels, h, w)


def unfold_frames(sample: torch.Tensor, videos: int) -> torch.Tensor:
    """(B*F, C, h, w) video-major -> (B, C, F, h, w)."""
    rows, channels, h, w = sample.shape
    return sample.reshape(videos, rows // videos, channels, h, w).permute(0, 2, 1, 3, 4)


class UNet2DBackbone(Backbone):
    """A diffusers ``UNet2DConditionModel`` as FLATTEN's inflated video U-Net."""

    def default_levels(self) -> tuple[int, ...]:
        """The finest level with attention: the latent grid for SD 1.x/2.x, half of it (1/16 of
        the image) for SDXL, whose finest level has none."""
        types = self.denoiser.config.down_block_types
        return (next((i for i, kind in enumerate(types) if "CrossAttn" in kind), 0),)

    def token_grids(self, latent_size: tuple[int, int], levels: tuple[int, ...]) -> list[tuple[int, int]]:
        """Grids of the U-Net ``levels``: each halves the one above, rounding up as the U-Net's
        stride-2 convolutions do."""
        h, w = latent_size
        grids = []
        for level in range(max(levels) + 1):
            if level in levels:
                grids.append((h, w))
            h, w = -(-h // 2), -(-w // 2)
        return grids

    def injection_points(self) -> InjectionSpec:
        return InjectionSpec.from_unet(self.denoiser)

    def installed(self, context: FlattenContext):
        return flatten_installed(self.denoiser, context)

    def predict(
        self,
        latents: torch.Tensor,
        timestep: int,
        conditioning,
        extra_kwargs: Callable[[torch.Tensor, int, object, dict], dict] | None = None,
    ) -> torch.Tensor:
        """Noise prediction, frames folded into the U-Net's batch and each row's conditioning
        repeated for its frames."""
        videos, _, frames = latents.shape[:3]
        sample = fold_frames(latents).to(self.denoiser.dtype)
        kwargs = conditioning.unet_kwargs(frames)
        if extra_kwargs is not None:
            kwargs.update(extra_kwargs(sample, timestep, conditioning, kwargs))
        noise = self.denoiser(sample, timestep, **kwargs).sample
        return unfold_frames(noise, videos).to(latents.dtype)


register_backbone("UNet2DConditionModel", UNet2DBackbone)
