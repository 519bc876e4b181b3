"""The edit's schedule: the schedulers, the timesteps each phase visits, the paper's step counts,
and the rule that sampling injects only where inversion recorded (docs/architecture.md).

The schedulers are chosen here and nowhere else: DDIM for sampling and its inverse for
inversion, from a checkpoint's own scheduler config (its betas and prediction type kept).
"""

from __future__ import annotations

from .. import defaults

#: The paper's schedule, used where neither the caller nor an inversion sets it.
DEFAULT_STEPS = dict(
    num_inference_steps=defaults.NUM_INFERENCE_STEPS,
    num_inversion_steps=defaults.NUM_INVERSION_STEPS,
    inject_steps=defaults.INJECT_STEPS,
)


def ddim_schedulers(config: dict):
    """(DDIM scheduler, DDIM inverse scheduler) from a scheduler config of any kind."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    scheduler = DDIMScheduler.from_config(config)
    return scheduler, DDIMInverseScheduler.from_config(scheduler.config)


def ddim_pair(scheduler, inverse_scheduler=None):
    """(DDIM scheduler, DDIM inverse scheduler) of a Stable Diffusion FLATTEN pipeline made with
    ``scheduler`` of any kind (a checkpoint's PNDM, Euler...): DDIM from its config, and
    ``inverse_scheduler`` when one is given, else DDIM's inverse from the same config."""
    if inverse_scheduler is None:
        return ddim_schedulers(dict(scheduler.config))
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(scheduler.config), inverse_scheduler


def inversion_timesteps(inverse_scheduler, num_inversion_steps: int) -> list[int]:
    """The timesteps inversion visits, in order: t = 1, 1 + k, ..., 1 + (n-1)k (k = 1000 // n)."""
    inverse_scheduler.set_timesteps(num_inversion_steps)
    return [int(t) for t in inverse_scheduler.timesteps]


def sampling_timesteps(scheduler, num_inference_steps: int) -> list[int]:
    """The timesteps sampling visits, in order."""
    scheduler.set_timesteps(num_inference_steps)
    return [int(t) for t in scheduler.timesteps]


def injected_timesteps(scheduler, num_inference_steps: int, inject_steps: int) -> list[int]:
    """The first ``inject_steps`` timesteps of the sampling schedule."""
    return sampling_timesteps(scheduler, num_inference_steps)[:inject_steps]


def check_schedule(scheduler, inverse_scheduler, num_inference_steps: int, num_inversion_steps: int,
                   inject_steps: int) -> None:
    """Raise ``ValueError`` when sampling would inject features at a timestep that inversion never
    visits (so none were captured there). Takes the schedulers (they set the timesteps), so the
    app can check a checkpoint's schedule before its weights load."""
    visited = set(inversion_timesteps(inverse_scheduler, num_inversion_steps)[:-1])
    unseen = sorted(set(injected_timesteps(scheduler, num_inference_steps, inject_steps)) - visited)
    if unseen:
        raise ValueError(
            f"sampling with {num_inference_steps} steps injects features at timesteps that inversion with "
            f"{num_inversion_steps} steps never visits ({unseen[:5]}...); use a number of inversion steps "
            f"that is a multiple of the number of sampling steps (e.g. {2 * num_inference_steps})"
        )


def resolve_edit(inversion, base_config, asked_config: dict, asked_steps: dict):
    """The config and steps of an edit: what the caller asked (None: not asked), else the
    inversion's, else ``base_config`` and the paper's steps. Asking an inversion for other ones
    is a ``ValueError``.

    Args:
        inversion: the :class:`~flatten_video.pipelines.inversion.FlattenInversion` edited, or None.
        base_config: the pipeline's default :class:`~flatten_video.models.FlattenConfig`.
        asked_config: {config field: value or None}.
        asked_steps: {"num_inference_steps", "num_inversion_steps", "inject_steps": value or None}.

    Returns:
        (config, steps).
    """
    base = inversion.config if inversion is not None else base_config
    config = type(base)(**{
        name: getattr(base, name) if value is None else (tuple(value) if name == "levels" else value)
        for name, value in asked_config.items()
    })
    made = DEFAULT_STEPS if inversion is None else dict(
        num_inference_steps=inversion.num_inference_steps,
        # A start that is not an inversion took no inversion steps: they do not apply to it.
        num_inversion_steps=getattr(inversion, "num_inversion_steps", DEFAULT_STEPS["num_inversion_steps"]),
        inject_steps=inversion.inject_steps,
    )
    steps = {name: made[name] if value is None else value for name, value in asked_steps.items()}
    if inversion is not None:
        inversion.check_compatible(config, **steps)
    return config, steps


def flow_scheduler(config: dict):
    """The flow-matching Euler scheduler of a checkpoint's scheduler config of any kind, its shift
    kept (Wan's released configs are UniPC with ``flow_shift``; FlowEdit and the ODE inversion
    take plain Euler steps along the same shifted levels)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    shift = config.get("flow_shift") or config.get("shift") or 1.0
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=config.get("num_train_timesteps", 1000), shift=shift)


def flow_schedule(scheduler, num_inference_steps: int) -> tuple[list[float], list[float]]:
    """(timesteps, levels) of a flow-matching schedule: N timesteps and N + 1 levels ending at 0."""
    scheduler.set_timesteps(num_inference_steps)
    return [float(t) for t in scheduler.timesteps], [float(s) for s in scheduler.sigmas]
