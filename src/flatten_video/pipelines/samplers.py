"""DDIM inversion and sampling as small pure functions over a model callable, in k-diffusion's
shape: the pipeline builds the callable (guidance rows, the injection scope, windows), the
sampler only walks the timesteps. No state is kept between calls.
"""

from __future__ import annotations

from typing import Callable

import torch

def guided(prediction: torch.Tensor, scale: float, halves: bool | None = None) -> torch.Tensor:
    """Classifier-free guidance of a prediction whose rows are (unconditional, conditional) halves
    when ``halves`` (default: ``scale > 1``, when the guidance rows are made): uncond + scale x
    (cond - uncond), or the conditional half alone at ``scale <= 1`` (a step that is not guided,
    as Wan 2.2's low-noise expert at ``guidance_scale_2=1``); the prediction itself without halves."""
    if not (scale > 1.0 if halves is None else halves):
        return prediction
    uncond, cond = prediction.chunk(2)
    return uncond + scale * (cond - uncond) if scale > 1.0 else cond


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


# -- flow matching ------------------------------------------------------------------------------
# A flow model predicts the velocity v = d z / d sigma of the straight path z_sigma = (1 - sigma) x
# + sigma n from data x (sigma 0) to noise n (sigma 1). ``sigmas`` run from the first level of the
# schedule down to 0, one more than the steps; the model sees each step's timestep.

#: velocity(latents, step index, timestep) -> velocity of the same shape.
Velocity = Callable[[torch.Tensor, int, float], torch.Tensor]
#: edit_velocities(z_src, z_tar, step index, timestep) -> (v_src, v_tar), each with its guidance.
EditVelocities = Callable[[torch.Tensor, torch.Tensor, int, float], tuple[torch.Tensor, torch.Tensor]]


def euler_sample(velocity: Velocity, latents: torch.Tensor, timesteps: list[float], sigmas: list[float], *,
                 callback: Callable[[int, float, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Euler steps of the flow ODE from level ``sigmas[0]`` to ``sigmas[-1]`` (0): z += (s' - s) v(z, t)."""
    for index, t in enumerate(timesteps):
        latents = latents + (sigmas[index + 1] - sigmas[index]) * velocity(latents, index, t)
        if callback is not None:
            latents = callback(index, t, latents)
    return latents


def euler_invert(velocity: Velocity, latents: torch.Tensor, timesteps: list[float], sigmas: list[float], *,
                 on_level: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """The flow ODE run backwards, from data (level 0) up to ``sigmas[0]``, along the sampling
    schedule: at each level s the model sees the latent at s with s's timestep (the latent at 0
    with timestep 0 first), and the step moves it to the next level up, as DDIM inversion walks.

    Args:
        timesteps, sigmas: the *sampling* schedule (N timesteps, N + 1 levels ending at 0).
        on_level: called with (sampling step index i, the latent at level ``sigmas[i]``) for
            every i, the last (i = 0) with the result: what sampling step i will see.

    Returns:
        The latent at level ``sigmas[0]``.
    """
    steps = len(timesteps)
    for index in range(steps - 1, -1, -1):  # from level sigmas[steps] = 0 up to sigmas[0]
        level, t = sigmas[index + 1], timesteps[index + 1] if index + 1 < steps else 0.0
        latents = latents + (sigmas[index] - level) * velocity(latents, index, t)
        if on_level is not None:
            on_level(index, latents)
    return latents


def flowedit(
    edit_velocities: EditVelocities,
    target_velocity: Velocity,
    source: torch.Tensor,
    timesteps: list[float],
    sigmas: list[float],
    *,
    n_max: int,
    n_min: int = 0,
    n_avg: int = 1,
    generator: torch.Generator | None = None,
    callback: Callable[[int, float, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """FlowEdit (Kulikov et al. 2024): inversion-free editing with a flow model.

    The edit path z starts at the source latents x. At each editing step, for each of ``n_avg``
    fresh noises n, the source is noised to z_src = (1 - s) x + s n and the edit carried along to
    z_tar = z + z_src - x; z moves by (s' - s) times the mean of v_tar(z_tar) - v_src(z_src). The
    first ``N - n_max`` steps are skipped; from step ``N - n_min`` on, z_tar is noised once and
    sampled plainly with the target velocity. With equal velocities for both prompts the update
    is zero and the source comes back exactly.

    Args:
        edit_velocities: (z_src, z_tar, index, t) -> (v_src, v_tar).
        target_velocity: (z, index, t) -> v_tar, for the last ``n_min`` steps.
        source: (B, C, F', h, w) source latents x.
        timesteps, sigmas: the schedule (N timesteps, N + 1 levels ending at 0).
        n_max, n_min, n_avg: steps that edit, plain steps at the end, noises averaged per step.
        generator: draws the noises (on the CPU, so a seed gives the same edit everywhere).

    Returns:
        The edited latents (B, C, F', h, w).
    """
    steps = len(timesteps)

    def noise() -> torch.Tensor:
        return torch.randn(source.shape, generator=generator, dtype=source.dtype).to(source.device)

    edited, plain = source, None
    for index, t in enumerate(timesteps):
        if steps - index > n_max:
            continue
        level, step = sigmas[index], sigmas[index + 1] - sigmas[index]
        if steps - index > n_min:
            delta = torch.zeros_like(source)
            for _ in range(n_avg):
                noised = (1 - level) * source + level * noise()
                # z + z_src - x, added in this order so that z = x gives z_tar = z_src to the bit.
                v_src, v_tar = edit_velocities(noised, noised + (edited - source), index, t)
                delta = delta + (v_tar - v_src) / n_avg
            edited = edited + step * delta
            current = edited
        else:
            if plain is None:
                plain = edited + (1 - level) * source + level * noise() - source
            plain = plain + step * target_velocity(plain, index, t)
            current = plain
        if callback is not None:
            current = callback(index, t, current)
            if plain is None:
                edited = current
            else:
                plain = current
    return edited if plain is None else plain
