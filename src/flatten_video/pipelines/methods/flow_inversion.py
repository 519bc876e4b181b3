"""The paper's recipe on a flow-matching model (docs/architecture.md, "Backbones: Wan"): ODE
inversion of the source latents with the source prompt, no guidance and FLATTEN on, along the
sampling schedule run backwards; sampling from the inverted noise then takes the source's
self-attention query and key during its first ``inject_steps`` steps.

The source features are always recomputed: inversion keeps the latent each injected step will
see (one latent a step), and sampling puts it in front of its batch so the source's query and key
come from the same model call. Storing them instead would take ~300 GB for Wan 2.1 at 81 frames
(32,760 tokens x 30 blocks x 2 x 40 steps in float16).
"""

from __future__ import annotations

from ..inversion import FlattenInversion
from ..samplers import euler_invert
from ..schedule import flow_schedule
from .base import EditRequest, InversionMethod, register_method


class FlowInversion(InversionMethod):
    """ODE inversion plus injection of the source's self-attention query and key (recomputed)."""

    name = "inversion"
    sampler = "flow"
    #: Inversion runs the sampling schedule backwards, so it has no step count of its own.
    options = ("inject_steps",)

    def invert(self, pipe, latents, trajectories: dict, request: EditRequest) -> FlattenInversion:
        """Euler steps of the flow ODE from the source latents (1, C, F', h, w) at level 0 up to
        the schedule's first level, the model seeing each level's latent with its timestep; the
        latents of the levels sampling's first ``inject_steps`` steps start from are kept."""
        timesteps, sigmas = flow_schedule(pipe.scheduler, request.num_inference_steps)
        inversion = FlattenInversion(
            latents=latents, trajectories=trajectories, config=request.config,
            num_inference_steps=request.num_inference_steps, num_inversion_steps=request.num_inference_steps,
            injected_timesteps=timesteps[: request.inject_steps], feature_mode="recompute",
            source_prompt=request.source_prompt,
        )
        source_row = pipe.source_conditioning(request.source_prompt, latents)
        latents = latents.to(pipe._execution_device)
        with pipe.denoising(request.config, latents.shape[2], trajectories, phase="inversion", steps=len(timesteps),
                            desc="ODE inversion") as evaluate:

            def keep(index, z):
                if index < request.inject_steps:
                    inversion.source_latents[timesteps[index]] = z.clone()

            velocity = lambda z, index, t: evaluate(z, t, source_row)  # noqa: E731
            inversion.latents = euler_invert(velocity, latents, timesteps, sigmas, on_level=keep)
        return inversion


register_method(FlowInversion())
