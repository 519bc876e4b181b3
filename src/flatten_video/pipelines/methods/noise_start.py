"""ControlVideo's starts (paper, Sec. 4.4): no inversion and nothing injected; every frame
starts from one seeded noise (``noise``), or every trajectory from one (``trajectory-noise``).
ControlVideo pairs them with a ControlNet and guidance 12.5."""

from __future__ import annotations

from ...models.context import FlattenConfig
from ...timing import timed
from ...trajectories import start_noise
from ..inversion import EditStart
from .base import EditMethod, EditRequest, register_method


class NoiseStart(EditMethod):
    """Seeded noise shared by every frame (``per_trajectory=False``) or along every trajectory."""

    def __init__(self, name: str, per_trajectory: bool):
        self.name = name
        self.per_trajectory = per_trajectory

    def trajectory_levels(self, config: FlattenConfig) -> tuple[int, ...]:
        """Per-trajectory noise needs the latent grid's trajectories too."""
        if self.per_trajectory:
            return tuple(sorted(set(config.levels) | {0}))
        return super().trajectory_levels(config)

    def start(self, pipe, request: EditRequest, trajectories: dict, timings: dict) -> EditStart:
        frames, config, backbone = request.frames, request.config, pipe.backbone
        with timed(timings, "noise", pipe._execution_device):
            size = backbone.latent_size(*frames.shape[-2:])
            if self.per_trajectory and size not in trajectories:
                raise ValueError(f"method='{self.name}' needs the trajectories of the latent grid {size}; give them or none")
            labels = trajectories[size].labels.cpu() if self.per_trajectory else None
            noise = start_noise(backbone.in_channels, backbone.num_latent_frames(len(frames)), size, labels,
                                request.generator)
            latents = (noise * pipe.scheduler.init_noise_sigma).to(pipe._execution_device, backbone.dtype).contiguous()
            # Flow-guided attention only needs the grids of the config's levels.
            grids = set(pipe.token_grids(*frames.shape[-2:], config.levels)) if config.flow_guided else set()
            return EditStart(
                latents=latents, trajectories={g: t for g, t in trajectories.items() if g in grids}, config=config,
                num_inference_steps=request.num_inference_steps, method=self.name, source_prompt=request.source_prompt,
                timings=timings,
            )


register_method(NoiseStart("noise", per_trajectory=False))
register_method(NoiseStart("trajectory-noise", per_trajectory=True))
