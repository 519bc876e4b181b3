"""DDIM inversion and sampling as small pure functions over a model callable, in k-diffusion's
shape: the pipeline builds the callable (guidance rows, the injection scope, windows), the
sampler only walks the timesteps. No state is kept between calls.
"""

from __future__ import annotations

from typing import Callable

import torch

#: model(latents (B, C, F', h, w), step index, timestep) -> noise prediction of the same shape.
Model = Callable[[torch.Tensor, int, int], torch.Tensor]


def ddim_invert(model: Model, latents: torch.Tensor, inverse_scheduler, timesteps: list[int], step: int) -> torch.Tensor:
    """Deterministic DDIM inversion, as the paper's code walks it.

    At each t of ``timesteps[:-1]`` the model sees the latent at noise level t with timestep t,
    and the step moves it to level t + ``step`` (``DDIMInverseScheduler.step(eps, s, z)`` moves
    from s - step to s, so it is called with t + step).

    Args:
        latents: (B, C, F', h, w) at the first timestep's level.
        timesteps: the inversion's timesteps (:func:`~flatten_video.pipelines.schedule.inversion_timesteps`).
        step: the distance between consecutive timesteps.

    Returns:
        (B, C, F', h, w) at the last timestep's level.
    """
    for index, t in enumerate(timesteps[:-1]):
        noise = model(latents, index, t)
        latents = inverse_scheduler.step(noise, t + step, latents).prev_sample
    return latents


def ddim_sample(
    model: Model,
    latents: torch.Tensor,
    scheduler,
    timesteps: list[int],
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callable[[int, int, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """DDIM sampling from ``latents`` (B, C, F', h, w) along ``timesteps`` (the scheduler's, set).

    ``callback(index, t, latents)`` runs after every step and returns the latents to go on with.
    """
    for index, t in enumerate(timesteps):
        noise = model(latents, index, t)
        latents = scheduler.step(noise, t, latents, eta=eta, generator=generator).prev_sample
        if callback is not None:
            latents = callback(index, t, latents)
    return latents
