"""The paper's method (docs/architecture.md, "The method", steps 5-6): DDIM inversion of the
source latents with the source prompt (empty: no caption needed), guidance 1 and FLATTEN on,
recording the source features at the timesteps that sampling's first ``inject_steps`` steps
visit, for sampling to inject."""

from __future__ import annotations

import logging
from contextlib import nullcontext

from ...choices import METHOD_OPTIONS
from ...models.features import FeatureStore, device_budget, feature_budget, feature_placement, store_estimate
from ..inversion import FlattenInversion
from ..samplers import ddim_invert
from ..schedule import injected_timesteps, inversion_timesteps
from .base import EditRequest, InversionMethod, register_method

logger = logging.getLogger(__name__)


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB"


class DDIMInversion(InversionMethod):
    """DDIM inversion plus plug-and-play injection of the source features."""

    name = "inversion"
    options = METHOD_OPTIONS["inversion"]

    def invert(self, pipe, latents, trajectories: dict, request: EditRequest) -> FlattenInversion:
        """DDIM inversion of ``latents`` (1, C, F', h, w) with FLATTEN on.

        At the injected timesteps the latent fed to the model is kept, and the source features
        are recorded (``feature_mode="stored"``, kept in ``feature_dtype``) or left to be
        recomputed from that latent during sampling (``"recompute"``). The features of the first
        injected timestep are recorded on the model's device; the whole store is estimated as
        that size times ``inject_steps`` and placed (:func:`~flatten_video.models.features.feature_placement`):
        on the device within half its free memory, else on the host; ``"auto"`` drops the store
        and recomputes when it does not fit ``feature_memory_budget`` on the host either.
        """
        feature_mode = request.feature_mode
        device = pipe._execution_device
        # Read before inversion allocates anything, so the figures are what the store may take.
        on_device = device_budget(device)
        on_host = feature_budget(request.feature_memory_budget) if feature_mode == "auto" else None
        timesteps = inversion_timesteps(pipe.inverse_scheduler, request.num_inversion_steps)
        step = pipe.inverse_scheduler.config.num_train_timesteps // request.num_inversion_steps
        injected = injected_timesteps(pipe.scheduler, request.num_inference_steps, request.inject_steps)
        first_captured = next((t for t in timesteps if t in injected), None)  # inversion runs t upwards
        if feature_mode == "auto" and not injected:
            feature_mode = "stored"  # nothing to hold: an empty store, as stored mode gives
        # Stored and auto modes record until the size of the store can be told (at the first step
        # recorded), then place it (:meth:`_place_store`); recorded on an accelerator that has a
        # budget, so a store that stays there is never copied. Kept in the dtype the denoiser
        # computes in: features recomputed from the source latents (recompute mode, a resumed
        # edit) are then the stored ones, not their float16 rounding.
        dtype = request.feature_dtype or pipe.backbone.dtype
        where = device if on_device is not None else "cpu"
        store = FeatureStore(storage_dtype=dtype, storage_device=where) if feature_mode != "recompute" else None
        inversion = FlattenInversion(
            latents=latents, trajectories=trajectories, config=request.config,
            num_inference_steps=request.num_inference_steps, num_inversion_steps=request.num_inversion_steps,
            injected_timesteps=injected, feature_mode=feature_mode, features=store, source_prompt=request.source_prompt,
        )
        source_row = pipe.source_conditioning(request.source_prompt, latents)
        latents = latents.to(device)
        with pipe.denoising(request.config, latents.shape[2], trajectories, store, phase="inversion",
                            steps=len(timesteps) - 1, desc="DDIM inversion") as evaluate:

            def model(latents, index, t):
                # Keep what sampling needs at t: the model input and (stored mode) every window's features.
                capture = t in inversion.injected_timesteps and inversion.features is not None
                if t in inversion.injected_timesteps:
                    inversion.source_latents[t] = latents.clone()

                def scope(run, rows):
                    return inversion.features.capturing(run.key(t)) if capture else nullcontext()

                noise = evaluate(latents, t, source_row, scope)
                if capture and t == first_captured:
                    self._place_store(inversion, evaluate.context, request.feature_mode, on_device, on_host)
                return noise

            inversion.latents = ddim_invert(model, latents, pipe.inverse_scheduler, timesteps, step)
        return inversion

    @staticmethod
    def _place_store(inversion: FlattenInversion, context, mode: str, on_device: int | None,
                     on_host: int | None) -> None:
        """Once the features of the first injected timestep are recorded on the model's device,
        place the whole store (:func:`~flatten_video.models.features.store_estimate`): it stays
        on the device, moves to the host, or (``"auto"`` beyond the host's budget) is dropped and
        the features are recomputed from the source latents during sampling."""
        estimate = store_estimate(inversion.features.nbytes, len(inversion.injected_timesteps))
        placement = feature_placement(estimate, on_device, on_host, mode)
        if placement == "recompute":
            logger.info(
                "feature_mode='auto': the source features would take %s, over the budget of %s; "
                "recomputing them during sampling instead",
                _gib(estimate),
                _gib(on_host),
            )
            inversion.feature_mode = "recompute"
            inversion.features = context.features = None
            return
        inversion.feature_mode = "stored"
        if placement == "host":
            inversion.features.move_to("cpu")


register_method(DDIMInversion())
