"""The Wan 2.x video transformer backbone (diffusers' ``WanTransformer3DModel``;
docs/architecture.md, "Backbones: Wan").

Wan patchifies latents (B, 16, F', h, w) with patch (1, 2, 2) into frame-major tokens
(F' x h/2 x w/2), so a token covers 16x16 pixels and, after latent frame 0, 4 source frames: its
causal 3-D VAE has temporal factor 4 and spatial factor 8. Every block's self-attention (``attn1``)
already attends over all video tokens (dense spatio-temporal attention is native); FLATTEN adds
flow-guided attention on its output along trajectories of the token grid, in the blocks the config
names (default: every block).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch

from ..families import FAMILIES
from ..models.context import FlattenContext
from ..models.injection import InjectionSpec
from ..models.install import self_attention_modules
from ..models.wan_attention import FlattenWanAttnProcessor
from .base import Backbone, register_backbone


class WanBackbone(Backbone):
    """A diffusers ``WanTransformer3DModel`` with FLATTEN in its self-attention; or Wan 2.2's two
    experts: ``denoiser`` for the high-noise timesteps (at or above ``boundary_timestep``) and
    ``low_noise`` below it, both with FLATTEN.

    Args:
        denoiser: the (high-noise) transformer.
        spatial_factor: the VAE's pixels per latent.
        low_noise: Wan 2.2 A14B's ``transformer_2`` (None: one transformer for every step).
        boundary_timestep: where the experts hand over (``boundary_ratio`` x the training timesteps).
    """

    temporal_factor = FAMILIES["wan"].temporal_factor
    component = "transformer"

    def __init__(self, denoiser: torch.nn.Module, spatial_factor: int, low_noise: torch.nn.Module | None = None,
                 boundary_timestep: float | None = None):
        super().__init__(denoiser, spatial_factor)
        if low_noise is not None and boundary_timestep is None:
            raise ValueError("two Wan experts need the boundary timestep where they hand over (boundary_ratio)")
        self.low_noise, self.boundary_timestep = low_noise, boundary_timestep

    def experts(self) -> list[tuple[str, torch.nn.Module]]:
        """(name prefix, transformer) of each expert: the one, or the high- then the low-noise one."""
        return [("", self.denoiser)] + ([("transformer_2.", self.low_noise)] if self.low_noise is not None else [])

    def expert_for(self, timestep: float) -> torch.nn.Module:
        """The transformer that denoises at ``timestep``, as diffusers' Wan pipeline picks it."""
        if self.low_noise is None or timestep >= self.boundary_timestep:
            return self.denoiser
        return self.low_noise

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(self.denoiser.config.patch_size)

    @property
    def side_multiple(self) -> int:
        """Sides that the VAE and the patch divide: 8 x 2 = 16 px for Wan 2.1."""
        return self.spatial_factor * max(self.patch_size[1:])

    def rows_per_video(self, num_latent_frames: int) -> int:
        """One: a row of Wan's tokens is a whole video, frame-major."""
        return 1

    def token_grids(self, latent_size: tuple[int, int], levels: tuple[int, ...]) -> list[tuple[int, int]]:
        """The one token grid, (h / 2, w / 2) for patch (1, 2, 2); ``levels`` do not apply."""
        _, ph, pw = self.patch_size
        return [(latent_size[0] // ph, latent_size[1] // pw)]

    def self_attentions(self) -> list[tuple[str, torch.nn.Module]]:
        """(name, module) of every block's self-attention in every expert, found by meaning."""
        return [(prefix + name, module) for prefix, expert in self.experts() for name, module in self_attention_modules(expert)]

    def injection_points(self) -> InjectionSpec:
        """The self-attention query and key of every block: a transformer has no decoder levels,
        and its blocks all see the same token grid."""
        return InjectionSpec((), tuple(name for name, _ in self.self_attentions()))

    @contextmanager
    def installed(self, context: FlattenContext):
        """FLATTEN's processor in every block's self-attention (set per module: diffusers'
        ``set_attn_processor`` with a dict needs every processor), the stock ones after."""
        injected = set(self.injection_points().attentions)
        stock = []
        try:
            for prefix, expert in self.experts():
                for block, (name, module) in enumerate(self_attention_modules(expert)):  # blocks counted per expert
                    stock.append((module, module.processor))
                    flow_guided = context.blocks is None or block in context.blocks
                    module.set_processor(FlattenWanAttnProcessor(context, prefix + name, prefix + name in injected,
                                                                 flow_guided))
            yield context
        finally:
            for module, processor in stock:
                module.set_processor(processor)

    def predict(
        self,
        latents: torch.Tensor,
        timestep: int,
        conditioning,
        extra_kwargs: Callable[[torch.Tensor, int, object, dict], dict] | None = None,
    ) -> torch.Tensor:
        """The flow-matching velocity of a batch of videos, by the expert of ``timestep``; each row
        reads its own text embedding."""
        model = self.expert_for(float(timestep))
        sample = latents.to(model.dtype)
        kwargs = {"encoder_hidden_states": conditioning.encoder_hidden_states.to(model.dtype)}
        if extra_kwargs is not None:
            kwargs.update(extra_kwargs(sample, timestep, conditioning, kwargs))
        t = torch.as_tensor(timestep, device=sample.device, dtype=torch.float32).reshape(-1).expand(len(sample))
        velocity = model(hidden_states=sample, timestep=t, return_dict=False, **kwargs)[0]
        return velocity.to(latents.dtype)


register_backbone("WanTransformer3DModel", WanBackbone)
