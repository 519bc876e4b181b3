"""What FLATTEN needs from a denoiser (docs/architecture.md, "Axis 1: the backbone").

A :class:`Backbone` is a small adapter over a pipeline's denoiser (a diffusers model as
``from_pretrained`` loads it): it installs FLATTEN for one call and takes it out after (also on
error), says at which token grids flow-guided attention runs for a latent shape, where source
features are injected, how its VAE maps source frames to latent frames, and predicts for a batch
of videos ``(B, C, F', h, w)``. The pipelines talk to the denoiser only through it, so a new
denoiser is one new backbone and one line in :data:`BACKBONES`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Callable, ClassVar

import torch

from ..latent_frames import num_latent_frames
from ..models.context import FlattenContext
from ..models.injection import InjectionSpec


class Backbone:
    """The denoiser seen from FLATTEN.

    Args:
        denoiser: the pipeline's denoiser module (``unet``, ``transformer``).
        spatial_factor: pixels per latent cell side (the VAE's downsampling).

    Class attributes:
        temporal_factor: source frames per latent frame after the first (1: an image VAE).
        component: the pipeline component the backbone wraps.
    """

    temporal_factor: ClassVar[int] = 1
    component: ClassVar[str] = "unet"

    def __init__(self, denoiser: torch.nn.Module, spatial_factor: int):
        self.denoiser = denoiser
        self.spatial_factor = spatial_factor

    # -- what the model is --------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    @property
    def in_channels(self) -> int:
        """Latent channels C."""
        return self.denoiser.config.in_channels

    @property
    def side_multiple(self) -> int:
        """Frame sides in pixels must be multiples of this."""
        return self.spatial_factor

    def rows_per_video(self, num_latent_frames: int) -> int:
        """Rows of the denoiser's hidden states that hold one video of ``num_latent_frames``
        latent frames: one per frame where frames are folded into the batch (an image U-Net),
        one where a row holds the whole video's tokens (a video transformer). The feature store
        shares the source's rows by this count."""
        return num_latent_frames

    def num_latent_frames(self, num_frames: int) -> int:
        """F' latent frames of ``num_frames`` source frames (``ValueError`` when they do not fit)."""
        return num_latent_frames(num_frames, self.temporal_factor)

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """The latent grid (h, w) of frames of ``height`` x ``width`` pixels."""
        return height // self.spatial_factor, width // self.spatial_factor

    # -- what FLATTEN does there ----------------------------------------------------------------

    def default_levels(self) -> tuple[int, ...]:
        """The levels flow-guided attention runs at by default (0: the finest token grid)."""
        return (0,)

    def token_grids(self, latent_size: tuple[int, int], levels: tuple[int, ...]) -> list[tuple[int, int]]:
        """The token grids (h, w) of ``levels`` for a latent grid, where flow-guided attention runs."""
        raise NotImplementedError

    def injection_points(self) -> InjectionSpec:
        """Where source features are recorded and injected; raises
        :class:`~flatten_video.models.InjectionUnavailable` where none can be derived."""
        raise NotImplementedError

    def installed(self, context: FlattenContext) -> AbstractContextManager:
        """FLATTEN on the denoiser inside the block, the stock model after it (also on error)."""
        raise NotImplementedError

    def predict(
        self,
        latents: torch.Tensor,
        timestep: int,
        conditioning,
        extra_kwargs: Callable[[torch.Tensor, int, object, dict], dict] | None = None,
    ) -> torch.Tensor:
        """The model's prediction for a batch of videos, (B, C, F', h, w) -> (B, C, F', h, w).

        Row b of ``latents`` is conditioned by row b of ``conditioning``; ``extra_kwargs(sample,
        timestep, conditioning, kwargs)`` adds a plug-in's keyword arguments (ControlNet residuals)
        to the model call, given its input as the model sees it.
        """
        raise NotImplementedError


#: Denoiser class name -> its backbone. A new denoiser is one line here.
BACKBONES: dict[str, type[Backbone]] = {}


def register_backbone(denoiser_class: str, backbone: type[Backbone]) -> type[Backbone]:
    """Make ``backbone`` the adapter of denoisers of class ``denoiser_class`` (and its subclasses)."""
    BACKBONES[denoiser_class] = backbone
    return backbone


def backbone_for(denoiser: torch.nn.Module, spatial_factor: int) -> Backbone:
    """The registered backbone of ``denoiser``, looked up along its class hierarchy.

    Raises:
        ValueError: no backbone knows this kind of model.
    """
    for cls in type(denoiser).__mro__:
        if cls.__name__ in BACKBONES:
            return BACKBONES[cls.__name__](denoiser, spatial_factor)
    raise ValueError(f"flatten-video has no backbone for a {type(denoiser).__name__} (known: {', '.join(sorted(BACKBONES))})")
