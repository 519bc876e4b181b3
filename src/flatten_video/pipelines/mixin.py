"""What every FLATTEN pipeline shares (DESIGN.md 1-2): trajectories, VAE encoding and decoding,
DDIM inversion with feature capture, injected sampling, and FLATTEN installed on the U-Net for the
duration of a call.

Like diffusers' ``PAGMixin``, :class:`FlattenMixin` is a capability a pipeline class adds; the
pipeline keeps its components and says how one U-Net row is conditioned
(:meth:`FlattenMixin.encode_conditioning`). Every U-Net call goes through
:meth:`FlattenMixin.predict_noise`; guidance branches and the recompute-mode source row are rows
of its batch.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager, nullcontext
from typing import Callable

import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from tqdm.auto import tqdm

from ..choices import INITS
from ..flow import FLOW_METHODS, estimate_flow
from ..models.context import FlattenConfig, FlattenContext
from ..models.features import FEATURE_MODES, FeatureStore, feature_budget, store_estimate
from ..models.injection import InjectionSpec
from ..models.install import flatten_installed
from ..timing import timed
from ..trajectories import Trajectories, sample_trajectory_pyramid, start_noise
from ..validation import check_at_least, check_choice, check_frame_side, check_inject_steps, check_num_frames
from ..windows import anchor_frames
from .conditioning import Conditioning, fold_frames, stack_rows, unfold_frames
from .inversion import FlattenInversion
from .output import OUTPUT_TYPES, FlattenPipelineOutput, frames_to_output, frames_to_tensor
from .windowing import WindowRun, denoise, plan_runs, process_share

logger = logging.getLogger(__name__)


#: The paper's schedule (DESIGN.md 1.5-1.7), used where neither the caller nor an inversion sets it.
DEFAULT_STEPS = dict(num_inference_steps=50, num_inversion_steps=100, inject_steps=40)


#: Pixels the VAE encodes or decodes in one call: 8 frames at 512x512. SDXL's VAE at 1024x1024
#: in float32 peaked at 44.8 GiB decoding 8 frames a call and 16.3 GiB at 2 (H200, BENCHMARKS.md).
VAE_CHUNK_PIXELS = 8 * 512 * 512


def vae_chunk_frames(height: int, width: int, pixels: int = VAE_CHUNK_PIXELS) -> int:
    """Frames of ``height`` x ``width`` pixels per VAE call, so that one call holds about ``pixels``
    (at least one frame): the VAE's activations, not the U-Net's, set the peak at large sizes."""
    return max(1, pixels // (height * width))


def check_schedule(scheduler, inverse_scheduler, num_inference_steps: int, num_inversion_steps: int,
                   inject_steps: int) -> None:
    """Raise ``ValueError`` when sampling would inject features at a timestep that inversion never
    visits (so none were captured there). Takes the schedulers (they set the timesteps), so the
    app can check a checkpoint's schedule before its weights load."""
    inverse_scheduler.set_timesteps(num_inversion_steps)
    visited = {int(t) for t in inverse_scheduler.timesteps[:-1]}
    scheduler.set_timesteps(num_inference_steps)
    unseen = sorted({int(t) for t in scheduler.timesteps[:inject_steps]} - visited)
    if unseen:
        raise ValueError(
            f"sampling with {num_inference_steps} steps injects features at timesteps that inversion with "
            f"{num_inversion_steps} steps never visits ({unseen[:5]}...); use a number of inversion steps "
            f"that is a multiple of the number of sampling steps (e.g. {2 * num_inference_steps})"
        )


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB"


class FlattenMixin:
    """FLATTEN for a diffusers pipeline with ``unet``, ``vae``, ``scheduler`` (DDIM) and
    ``inverse_scheduler`` (DDIM inverse) components.

    The host class sets ``vae_scale_factor`` and implements :meth:`encode_conditioning`. Public
    steps can be run one by one: :meth:`prepare_trajectories`, :meth:`encode_video`,
    :meth:`invert`, :meth:`sample`, :meth:`decode_latents`; :meth:`invert_video` runs everything
    before sampling.

    Attributes:
        flatten: the :class:`FlattenContext` of the call in progress; None between calls, when
            the U-Net holds its stock processors and norms again.
    """

    flatten: FlattenContext | None = None
    #: Short side in pixels the model was trained at: the working size when the user sets none.
    default_short_side: int = 512
    #: Run the VAE in float32 when its config says ``force_upcast`` (SDXL's overflows in float16).
    upcast_vae: bool = False

    def encode_conditioning(self, prompt: str, height: int, width: int) -> Conditioning:
        """The conditioning of one U-Net row (a video) for ``prompt``, frames of ``height`` x ``width`` px."""
        raise NotImplementedError

    def default_config(self) -> FlattenConfig:
        """The paper's config, with flow-guided attention at this U-Net's highest-resolution level
        that has attention: the latent grid for SD 1.x/2.x, half of it (1/16 of the image) for SDXL,
        whose finest level has none."""
        types = self.unet.config.down_block_types
        return FlattenConfig(levels=(next((i for i, kind in enumerate(types) if "CrossAttn" in kind), 0),))

    def _conditioning(self, prompt: str, latents: torch.Tensor) -> Conditioning:
        return self.encode_conditioning(prompt, latents.shape[-2] * self.vae_scale_factor, latents.shape[-1] * self.vae_scale_factor)

    def _source_conditioning(self, latents: torch.Tensor) -> Conditioning:
        """The row of the source video: inversion's, and recompute mode's during sampling, which
        must see what inversion saw (the empty prompt)."""
        return self._conditioning("", latents)

    @contextmanager
    def _vae_precision(self):
        """The VAE's dtype for encoding and decoding: float32 inside the block when it must be upcast."""
        upcast = self.upcast_vae and getattr(self.vae.config, "force_upcast", False) and self.vae.dtype == torch.float16
        if not upcast:
            yield self.vae.dtype
            return
        self.vae.to(torch.float32)
        try:
            yield torch.float32
        finally:
            self.vae.to(torch.float16)

    # -- scope and checks ---------------------------------------------------------------------

    @contextmanager
    def flatten_enabled(
        self,
        config: FlattenConfig,
        num_frames: int,
        trajectories: dict[tuple[int, int], Trajectories],
        features: FeatureStore | None = None,
        phase: str = "",
    ):
        """FLATTEN on the U-Net inside the block, the stock U-Net after it (also on error).

        Yields the :class:`FlattenContext` the processors read, also kept in :attr:`flatten`.
        """
        device = self._execution_device
        trajectories = {grid: t.to(device) for grid, t in trajectories.items()}
        context = FlattenContext.from_config(config, num_frames, trajectories, features)
        context.phase = phase
        with flatten_installed(self.unet, context):
            self.flatten = context
            try:
                yield context
            finally:
                self.flatten = None

    @property
    def injection_spec(self) -> InjectionSpec:
        """Where features are injected in this U-Net; raises a clear ``ValueError`` if nowhere."""
        return InjectionSpec.from_unet(self.unet)

    def check_inputs(
        self,
        frames: torch.Tensor | None = None,
        *,
        config: FlattenConfig | None = None,
        num_inference_steps: int | None = None,
        num_inversion_steps: int | None = None,
        inject_steps: int | None = None,
        feature_mode: str | None = None,
        feature_memory_budget: int | None = None,
        flow_method: str | None = None,
        output_type: str | None = None,
        init: str | None = None,
    ) -> None:
        """Raise ``ValueError`` on inputs that cannot work, before anything runs; checks what is given."""
        if init is not None:
            check_choice("init", init, INITS)
            if init != "inversion":  # nothing is inverted or injected
                num_inversion_steps = inject_steps = None
        if feature_mode is not None:
            check_choice("feature mode", feature_mode, FEATURE_MODES)
        if feature_memory_budget is not None and (not isinstance(feature_memory_budget, int) or feature_memory_budget < 0):
            raise ValueError(f"feature_memory_budget must be a number of bytes >= 0, got {feature_memory_budget!r}")
        if flow_method is not None:
            check_choice("flow method", flow_method, FLOW_METHODS)
        if output_type is not None:
            check_choice("output_type", output_type, OUTPUT_TYPES)
        if frames is not None:
            check_num_frames("the video's length", len(frames))
            check_frame_side("the frame height", int(frames.shape[-2]))
            check_frame_side("the frame width", int(frames.shape[-1]))
            if config is not None and config.windowed(len(frames)):
                anchor_frames(len(frames), config.anchors)  # no more anchors than frames
        for name, value in (("num_inference_steps", num_inference_steps), ("num_inversion_steps", num_inversion_steps)):
            if value is not None:
                check_at_least(name, value, 1)
        if inject_steps is not None:
            check_inject_steps(inject_steps, num_inference_steps)
            if inject_steps:
                self.injection_spec  # noqa: B018 (raises when the U-Net has no injection points)
                if num_inversion_steps is not None:
                    self._check_schedule(num_inference_steps, num_inversion_steps, inject_steps)

    def _check_schedule(self, num_inference_steps: int, num_inversion_steps: int, inject_steps: int) -> None:
        check_schedule(self.scheduler, self.inverse_scheduler, num_inference_steps, num_inversion_steps, inject_steps)

    # -- video in, video out ------------------------------------------------------------------

    def latent_grids(self, height: int, width: int, levels: tuple[int, ...] = (0,)) -> list[tuple[int, int]]:
        """Latent grids (h, w) of the U-Net ``levels`` for frames of ``height`` x ``width`` pixels.

        Level 0 is the VAE's latent grid; each level halves it (rounding up, as the U-Net's
        stride-2 convolutions do).
        """
        h, w = height // self.vae_scale_factor, width // self.vae_scale_factor
        grids = []
        for level in range(max(levels) + 1):
            if level in levels:
                grids.append((h, w))
            h, w = -(-h // 2), -(-w // 2)
        return grids

    def prepare_trajectories(
        self,
        frames: torch.Tensor,
        *,
        flow_method: str = "raft",
        flatten_levels: tuple[int, ...] | None = None,
        generator: torch.Generator | None = None,
        progress: bool = True,
        flows: torch.Tensor | None = None,
    ) -> dict[tuple[int, int], Trajectories]:
        """Optical flow of the source frames (F, 3, H, W) in [0, 1] and the trajectories of each grid.

        ``flows``: the frames' forward flows (F-1, 2, H, W) when already estimated;
        ``flatten_levels``: default, the U-Net's finest level with attention (:meth:`default_config`).
        """
        if flatten_levels is None:
            flatten_levels = self.default_config().levels
        if flows is None:
            flows = estimate_flow(frames, flow_method, device=self._execution_device, progress=progress)
        seed = generator.initial_seed() if generator is not None else torch.initial_seed()
        cpu_generator = torch.Generator().manual_seed(seed)
        return sample_trajectory_pyramid(flows, self.latent_grids(*frames.shape[-2:], flatten_levels), cpu_generator)

    @torch.no_grad()
    def encode_video(
        self, frames: torch.Tensor, generator: torch.Generator | None = None, chunk_size: int | None = None
    ) -> torch.Tensor:
        """VAE latents times the scaling factor: (F, 3, H, W) in [0, 1] -> (1, C, F, h, w).

        Frames are encoded ``chunk_size`` at a time (default: :func:`vae_chunk_frames`); the
        posterior is sampled once for the whole video.
        """
        device = self._execution_device
        chunk_size = chunk_size or vae_chunk_frames(*frames.shape[-2:])
        with self._vae_precision() as dtype:
            moments = [
                self.vae.encode(chunk.to(device, dtype) * 2 - 1).latent_dist.parameters
                for chunk in frames.split(chunk_size)
            ]
        latents = DiagonalGaussianDistribution(torch.cat(moments)).sample(generator)
        latents = latents * self.vae.config.scaling_factor
        return latents.permute(1, 0, 2, 3).unsqueeze(0)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """(1, C, F, h, w) latents -> (F, 3, H, W) float32 frames in [0, 1], on the CPU, decoded
        ``chunk_size`` frames at a time (default: :func:`vae_chunk_frames`)."""
        chunk_size = chunk_size or vae_chunk_frames(*(side * self.vae_scale_factor for side in latents.shape[-2:]))
        latents = latents[0].permute(1, 0, 2, 3) / self.vae.config.scaling_factor
        with self._vae_precision() as dtype:
            frames = [
                self.vae.decode(chunk.to(self._execution_device, dtype)).sample.float().cpu()
                for chunk in latents.split(chunk_size)
            ]
        return (torch.cat(frames) / 2 + 0.5).clamp(0, 1)

    # -- the U-Net seam -------------------------------------------------------------------------

    def predict_noise(self, latents: torch.Tensor, timestep: int, conditioning: Conditioning) -> torch.Tensor:
        """Noise prediction for a batch of videos: (B, C, F, h, w) -> (B, C, F, h, w).

        Row b of ``latents`` is conditioned by row b of ``conditioning``; frames are folded into
        the U-Net's batch, which FLATTEN's processors and norms unfold per video.
        """
        videos, _, frames = latents.shape[:3]
        sample = fold_frames(latents).to(self.unet.dtype)
        kwargs = conditioning.unet_kwargs(frames)
        kwargs.update(self.extra_unet_kwargs(sample, timestep, conditioning, kwargs))
        noise = self.unet(sample, timestep, **kwargs).sample
        return unfold_frames(noise, videos).to(latents.dtype)

    def extra_unet_kwargs(self, sample: torch.Tensor, timestep: int, conditioning: Conditioning, unet_kwargs: dict) -> dict:
        """More keyword arguments of the U-Net call for a folded batch ``sample`` (B*F, C, h, w),
        given the ones ``conditioning`` already makes (``unet_kwargs``, frames repeated): a
        plug-in's (ControlNet residuals); none here."""
        return {}

    # -- inversion ------------------------------------------------------------------------------

    def _inversion_timesteps(self, num_inversion_steps: int) -> list[int]:
        self.inverse_scheduler.set_timesteps(num_inversion_steps)
        return [int(t) for t in self.inverse_scheduler.timesteps]

    def injected_timesteps(self, num_inference_steps: int, inject_steps: int) -> list[int]:
        """The first ``inject_steps`` timesteps of the sampling schedule."""
        self.scheduler.set_timesteps(num_inference_steps)
        return [int(t) for t in self.scheduler.timesteps[:inject_steps]]

    @torch.no_grad()
    def invert(
        self,
        latents: torch.Tensor,
        trajectories: dict[tuple[int, int], Trajectories],
        *,
        config: FlattenConfig | None = None,
        num_inversion_steps: int = 100,
        num_inference_steps: int = 50,
        inject_steps: int = 40,
        feature_mode: str = "auto",
        feature_dtype: torch.dtype = torch.float16,
        feature_memory_budget: int | None = None,
    ) -> FlattenInversion:
        """DDIM inversion of source latents with the empty prompt and FLATTEN active (DESIGN.md 1.5).

        The U-Net sees the latent at noise level t with timestep t for t = 1, 1 + k, ...,
        1 + (n-2)k (k = 1000 // n for ``num_inversion_steps`` n), and each deterministic step
        moves it to level t + k, as the paper's code does. At the timesteps that the first
        ``inject_steps`` sampling steps will visit, the latent fed to the U-Net is kept, and the
        source features are recorded (``feature_mode="stored"``, kept in ``feature_dtype`` on the
        CPU) or left to be recomputed from that latent during sampling (``"recompute"``).

        ``"auto"`` (the default) stores the features of the first injected timestep, then
        estimates the whole store as that size times ``inject_steps``: within
        ``feature_memory_budget`` it goes on storing, else it drops the store and recomputes, as
        recompute mode does. The returned inversion's ``feature_mode`` is the mode chosen.

        Args:
            latents: (1, C, F, h, w) source latents (:meth:`encode_video`).
            trajectories: (h, w) -> :class:`Trajectories` for the grids where FLATTEN runs.
            config: how FLATTEN runs (default: the paper's, :class:`FlattenConfig`); recorded in
                the inversion, and every edit of it uses the same.
            feature_memory_budget: bytes the stored features may take in ``"auto"`` mode;
                None: half of the host's available memory (no limit where that is unknown).
        """
        self.check_inputs(
            num_inference_steps=num_inference_steps, num_inversion_steps=num_inversion_steps, inject_steps=inject_steps,
            feature_mode=feature_mode, feature_memory_budget=feature_memory_budget,
        )
        return self._invert(
            latents, trajectories, config or self.default_config(), num_inversion_steps, num_inference_steps, inject_steps,
            feature_mode, feature_dtype, feature_memory_budget,
        )

    def _invert(
        self, latents, trajectories, config, num_inversion_steps, num_inference_steps, inject_steps, feature_mode,
        feature_dtype, feature_memory_budget,
    ) -> FlattenInversion:
        # Read before inversion allocates anything, so the figure is what the store may take.
        budget = feature_budget(feature_memory_budget) if feature_mode == "auto" else None
        timesteps = self._inversion_timesteps(num_inversion_steps)
        step = self.inverse_scheduler.config.num_train_timesteps // num_inversion_steps
        injected = self.injected_timesteps(num_inference_steps, inject_steps)
        if feature_mode == "auto" and not injected:
            feature_mode = "stored"  # nothing to hold: an empty store, as stored mode gives
        # Auto mode stores until it can tell the size of the store (at the first injected step).
        store = FeatureStore(storage_dtype=feature_dtype) if feature_mode != "recompute" else None
        inversion = FlattenInversion(
            latents=latents,
            trajectories=trajectories,
            config=config,
            num_inference_steps=num_inference_steps,
            num_inversion_steps=num_inversion_steps,
            injected_timesteps=injected,
            feature_mode=feature_mode,
            features=store,
        )
        empty = self._source_conditioning(latents)
        latents = latents.to(self._execution_device)
        with self.flatten_enabled(config, latents.shape[2], trajectories, store, phase="inversion") as context:
            runs = plan_runs(config, latents.shape[2], context.trajectories, self._execution_device)
            share = len(process_share(runs)[0])
            with self._progress((len(timesteps) - 1) * share, "DDIM inversion", share) as bar:
                for t in timesteps[:-1]:
                    noise = self._inversion_noise(inversion, context, runs, latents, t, empty, budget, bar)
                    latents = self.inverse_scheduler.step(noise, t + step, latents).prev_sample
        inversion.latents = latents
        return inversion

    def _inversion_noise(
        self, inversion: FlattenInversion, context: FlattenContext, runs: list[WindowRun], latents: torch.Tensor,
        t: int, conditioning: Conditioning, budget: int | None, bar,
    ) -> torch.Tensor:
        """One inversion evaluation keeping what sampling needs at t: nothing, or the U-Net
        input and (stored mode) every window's features."""
        capture = t in inversion.injected_timesteps and inversion.features is not None
        if t in inversion.injected_timesteps:
            inversion.source_latents[t] = latents.clone()

        def scope(run: WindowRun, rows: int):
            return inversion.features.capturing(run.key(t)) if capture else nullcontext()

        noise = denoise(self.predict_noise, context, runs, latents, t, conditioning, scope, bar.update)
        if capture and inversion.feature_mode == "auto":
            self._resolve_auto_mode(inversion, context, budget)
        return noise

    @staticmethod
    def _resolve_auto_mode(inversion: FlattenInversion, context: FlattenContext, budget: int | None) -> None:
        """Settle ``feature_mode="auto"`` once the features of the first injected timestep are
        stored (:func:`~flatten_video.models.features.store_estimate`): within ``budget`` (None:
        no limit) the inversion goes on storing; beyond it, the store is dropped and the features
        are recomputed from the source latents during sampling.
        """
        estimate = store_estimate(inversion.features.nbytes, len(inversion.injected_timesteps))
        if budget is None or estimate <= budget:
            inversion.feature_mode = "stored"
            return
        logger.info(
            "feature_mode='auto': the source features would take %s, over the budget of %s; "
            "recomputing them during sampling instead",
            _gib(estimate),
            _gib(budget),
        )
        inversion.feature_mode = "recompute"
        inversion.features = context.features = None

    @torch.no_grad()
    def invert_video(
        self,
        video,
        *,
        num_inference_steps: int = 50,
        num_inversion_steps: int = 100,
        inject_steps: int = 40,
        generator: torch.Generator | None = None,
        flow_method: str = "raft",
        attention_mode: str = "dsta+flatten",
        flatten_variant: str = "II",
        flatten_levels: tuple[int, ...] | None = None,
        window: int = 32,
        overlap: int = 8,
        anchors: int = 2,
        feature_mode: str = "auto",
        feature_dtype: torch.dtype = torch.float16,
        feature_memory_budget: int | None = None,
        trajectories: dict[tuple[int, int], Trajectories] | None = None,
        latents: torch.Tensor | None = None,
        flows: torch.Tensor | None = None,
        init: str = "inversion",
    ) -> FlattenInversion:
        """Everything before sampling: flow, trajectories, VAE encoding and inversion.

        Arguments as in the pipeline's ``__call__``; ``flows`` (F-1, 2, H, W) are the source's
        forward flows when already estimated. ``init="noise"`` or ``"trajectory-noise"`` makes
        the start ControlVideo's way instead (:data:`INITS`): seeded noise, no inversion, nothing
        injected, so ``num_inversion_steps`` and ``inject_steps`` do not apply. The result can be edited with many prompts
        (``pipe(inversion=..., prompt=...)`` or :meth:`sample`) and saved with
        :meth:`FlattenInversion.save`.
        """
        frames = frames_to_tensor(video)
        levels = self.default_config().levels if flatten_levels is None else tuple(flatten_levels)
        config = FlattenConfig(attention_mode, flatten_variant, levels, window, overlap, anchors)
        self.check_inputs(
            frames, config=config, num_inference_steps=num_inference_steps, num_inversion_steps=num_inversion_steps,
            inject_steps=inject_steps, feature_mode=feature_mode, feature_memory_budget=feature_memory_budget,
            flow_method=flow_method, init=init,
        )
        return self._invert_video(
            frames, config, num_inference_steps, num_inversion_steps, inject_steps, generator, flow_method,
            feature_mode, feature_dtype, feature_memory_budget, trajectories, latents, flows, init,
        )

    def _invert_video(
        self, frames, config, num_inference_steps, num_inversion_steps, inject_steps, generator, flow_method,
        feature_mode, feature_dtype, feature_memory_budget, trajectories, latents, flows, init="inversion",
    ) -> FlattenInversion:
        timings, device = {}, self._execution_device
        if trajectories is None:
            trajectories = {}
            if config.flow_guided or init == "trajectory-noise":
                if flows is None:
                    with timed(timings, "flow", device):
                        flows = estimate_flow(frames, flow_method, device=device)
                levels = tuple(sorted(set(config.levels) | {0})) if init == "trajectory-noise" else config.levels
                with timed(timings, "trajectories", device):
                    trajectories = self.prepare_trajectories(frames, flatten_levels=levels, generator=generator, flows=flows)
        if init != "inversion":
            with timed(timings, "noise", device):
                return self._noise_start(frames, config, trajectories, num_inference_steps, init, generator, timings)
        if latents is None:
            with timed(timings, "encode", device):
                latents = self.encode_video(frames, generator)
        with timed(timings, "invert", device):
            inversion = self._invert(
                latents, trajectories, config, num_inversion_steps, num_inference_steps, inject_steps, feature_mode,
                feature_dtype, feature_memory_budget,
            )
        inversion.timings = timings
        return inversion

    def _noise_start(self, frames, config, trajectories, num_inference_steps, init, generator, timings) -> FlattenInversion:
        """ControlVideo's start: noise shared by every frame, or along every trajectory; (1, C, F, h, w)."""
        count, h, w = len(frames), frames.shape[-2] // self.vae_scale_factor, frames.shape[-1] // self.vae_scale_factor
        if init == "trajectory-noise" and (h, w) not in trajectories:
            raise ValueError(f"init='trajectory-noise' needs the trajectories of the latent grid {(h, w)}; give them or none")
        labels = trajectories[(h, w)].labels.cpu() if init == "trajectory-noise" else None
        noise = start_noise(self.unet.config.in_channels, count, (h, w), labels, generator)
        latents = (noise * self.scheduler.init_noise_sigma).to(self._execution_device, self.unet.dtype).contiguous()
        # Flow-guided attention only needs the grids of the config's levels.
        grids = set(self.latent_grids(*frames.shape[-2:], config.levels)) if config.flow_guided else set()
        return FlattenInversion(
            latents=latents, trajectories={g: t for g, t in trajectories.items() if g in grids}, config=config,
            num_inference_steps=num_inference_steps, num_inversion_steps=0, injected_timesteps=[],
            feature_mode="stored", init=init, timings=timings,
        )

    # -- sampling ---------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self,
        inversion: FlattenInversion,
        prompt: str,
        negative_prompt: str = "",
        *,
        guidance_scale: float = 10.0,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        callback_on_step_end: Callable | None = None,
    ) -> torch.Tensor:
        """DDIM sampling from an inversion with the target prompt (DESIGN.md 1.7), FLATTEN set up as
        the inversion records.

        The negative prompt is the unconditional branch of classifier-free guidance (used when
        ``guidance_scale > 1``). During the first ``inversion.inject_steps`` steps the source
        features replace the fresh ones in every row of the batch.

        ``callback_on_step_end(pipe, step, timestep, {"latents": ...})`` is called after every
        step, diffusers-style; a returned dict may replace ``"latents"``.

        Returns:
            (1, C, F, h, w) final latents.
        """
        latents = inversion.latents.to(self._execution_device)
        guided = guidance_scale > 1.0
        rows = self._conditioning(prompt, latents)
        if guided:
            rows = Conditioning.cat([self._conditioning(negative_prompt, latents), rows])
        recompute = inversion.feature_mode == "recompute" and bool(inversion.injected_timesteps)
        source_row = self._source_conditioning(latents) if recompute else None
        store = FeatureStore() if recompute else inversion.features

        self.scheduler.set_timesteps(inversion.num_inference_steps)
        with self.flatten_enabled(inversion.config, inversion.num_frames, inversion.trajectories, store, phase="sampling") as context:
            runs = plan_runs(inversion.config, inversion.num_frames, context.trajectories, self._execution_device)
            share = len(process_share(runs)[0])
            with self._progress(len(self.scheduler.timesteps) * share, "Sampling", share) as bar:
                for i, t in enumerate(self.scheduler.timesteps):
                    t = int(t)
                    noise = self._sampling_noise(inversion, context, runs, i, t, latents, rows, source_row, bar)
                    if guided:
                        uncond, cond = noise.chunk(2)
                        noise = uncond + guidance_scale * (cond - uncond)
                    latents = self.scheduler.step(noise, t, latents, eta=eta, generator=generator).prev_sample
                    if callback_on_step_end is not None:
                        update = callback_on_step_end(self, i, t, {"latents": latents})
                        if update and "latents" in update:
                            latents = update["latents"]
        return latents

    def _sampling_noise(
        self, inversion: FlattenInversion, context: FlattenContext, runs: list[WindowRun], step: int, t: int,
        latents: torch.Tensor, rows: Conditioning, source_row: Conditioning | None, bar,
    ) -> torch.Tensor:
        """Noise of every guidance row at sampling step ``step``, (rows, C, F, h, w).

        Three layouts of one U-Net batch: plain rows after the injected steps; rows fed the stored
        features; or (recompute mode) the source latent as a leading row whose fresh features
        every other row takes, dropped from the result. Windows cut every row alike.
        """
        batch = latents.expand(rows.num_rows, *latents.shape[1:])

        def evaluate(batch, conditioning, scope):
            return denoise(self.predict_noise, context, runs, batch, t, conditioning, scope, bar.update)

        if step >= inversion.inject_steps:
            return evaluate(batch, rows, lambda run, frames: nullcontext())
        if source_row is None:
            return evaluate(batch, rows, lambda run, frames: context.features.injecting(run.key(t)))
        source = inversion.source_latents[t].to(latents.device)
        batch, conditioning = stack_rows([(source, source_row), (batch, rows)])
        return evaluate(batch, conditioning, lambda run, frames: context.features.sharing(frames))[1:]

    def _progress(self, total: int, desc: str, windows: int = 1):
        """A bar over U-Net evaluations: steps, or steps times windows for a long clip."""
        config = dict(getattr(self, "_progress_bar_config", {}))
        config.setdefault("desc", desc if windows == 1 else f"{desc} ({windows} windows a step)")
        return tqdm(total=total, **config)

    # -- composition ------------------------------------------------------------------------------

    def resolve_edit(
        self,
        inversion: FlattenInversion | None,
        *,
        attention_mode: str | None = None,
        flatten_variant: str | None = None,
        flatten_levels: tuple[int, ...] | None = None,
        window: int | None = None,
        overlap: int | None = None,
        anchors: int | None = None,
        num_inference_steps: int | None = None,
        num_inversion_steps: int | None = None,
        inject_steps: int | None = None,
    ) -> tuple[FlattenConfig, dict]:
        """The config and steps of an edit: what the caller gave, else the inversion's, else the
        paper's. Asking an inversion for other ones is a ``ValueError``.

        Returns:
            (config, {"num_inference_steps", "num_inversion_steps", "inject_steps"}).
        """
        base = inversion.config if inversion is not None else self.default_config()
        asked_config = dict(attention_mode=attention_mode, variant=flatten_variant, levels=flatten_levels,
                            window=window, overlap=overlap, anchors=anchors)
        config = FlattenConfig(**{
            name: getattr(base, name) if value is None else (tuple(value) if name == "levels" else value)
            for name, value in asked_config.items()
        })
        made = DEFAULT_STEPS if inversion is None else dict(
            num_inference_steps=inversion.num_inference_steps,
            num_inversion_steps=inversion.num_inversion_steps,
            inject_steps=inversion.inject_steps,
        )
        asked = dict(num_inference_steps=num_inference_steps, num_inversion_steps=num_inversion_steps, inject_steps=inject_steps)
        steps = {name: made[name] if value is None else value for name, value in asked.items()}
        if inversion is not None:
            inversion.check_compatible(config, **steps)
        return config, steps

    # -- the whole edit ---------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        video=None,
        prompt: str = "",
        negative_prompt: str = "",
        *,
        num_inference_steps: int | None = None,
        num_inversion_steps: int | None = None,
        inject_steps: int | None = None,
        guidance_scale: float = 10.0,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        flow_method: str = "raft",
        attention_mode: str | None = None,
        flatten_variant: str | None = None,
        flatten_levels: tuple[int, ...] | None = None,
        window: int | None = None,
        overlap: int | None = None,
        anchors: int | None = None,
        feature_mode: str = "auto",
        feature_dtype: torch.dtype = torch.float16,
        feature_memory_budget: int | None = None,
        trajectories: dict[tuple[int, int], Trajectories] | None = None,
        latents: torch.Tensor | None = None,
        inversion: FlattenInversion | None = None,
        init: str = "inversion",
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        decode_chunk_size: int | None = None,
    ):
        """Edit a video: flow, trajectories, VAE encoding, inversion, sampling, decoding.

        Args:
            video: source frames, (F, 3, H, W) tensor in [0, 1], (F, H, W, 3) array or a list of
                PIL images; H and W multiples of 8 (64 for the default U-Net depth), F >= 2.
            prompt: the edit prompt; negative_prompt: the unconditional branch.
            num_inference_steps, num_inversion_steps, inject_steps: the schedule; None takes the
                inversion's, else the paper's (50, 100, 40).
            guidance_scale, eta: the paper's defaults (10, 0).
            generator: seeds the VAE posterior sample and the trajectory sampling.
            flow_method: ``"raft"`` or ``"dis"``.
            attention_mode: ``"spatial"``, ``"dsta"``, ``"flatten"`` or ``"dsta+flatten"``.
            flatten_variant: ``"II"``, ``"I"`` or ``"source-qk"``.
            flatten_levels: U-Net levels where flow-guided attention runs (0: the latent grid; default:
                the finest level with attention, 0 for SD 1.x/2.x and 1 for SDXL).
            window, overlap, anchors: long clips (DESIGN.md 4): a clip longer than ``window`` frames
                is denoised in windows of that many frames overlapping by ``overlap``, each joined
                by ``anchors`` frames spread over the clip; ``window=0`` never splits the clip.
                These six default (None) to the inversion's, else ``"dsta+flatten"``, ``"II"``,
                the finest attention level, 32, 8, 2.
            feature_mode: ``"stored"``, ``"recompute"`` (less memory, more compute) or ``"auto"``
                (stored when the features fit ``feature_memory_budget``, else recompute).
            feature_dtype: dtype of stored features.
            feature_memory_budget: bytes the stored features may take in ``"auto"`` mode; None:
                half of the host's available memory.
            trajectories: precomputed trajectories (skips the optical flow).
            latents: precomputed source latents (1, C, F, h, w) (skips VAE encoding).
            inversion: a source already inverted (:meth:`invert_video`, :meth:`FlattenInversion.load`);
                skips everything before sampling, and ``video`` may then be None. Asking it for
                another schedule or attention than it was made with is an error.
            init: ``"inversion"`` (the paper), or ControlVideo's start (``"noise"``: one seeded
                noise for every frame; ``"trajectory-noise"``: one per trajectory), with no inversion
                and nothing injected; ControlVideo pairs it with a ControlNet and guidance 12.5.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
            decode_chunk_size: frames the VAE decodes at a time (default: 8 at 512x512, fewer at
                larger sizes, :func:`vae_chunk_frames`); lower it to save memory.

        Returns:
            :class:`FlattenPipelineOutput`, or a tuple ``(frames,)`` if not ``return_dict``.
        """
        check_choice("output_type", output_type, OUTPUT_TYPES)
        if decode_chunk_size is not None:
            check_at_least("decode_chunk_size", decode_chunk_size, 1)
        config, steps = self.resolve_edit(
            inversion, attention_mode=attention_mode, flatten_variant=flatten_variant, flatten_levels=flatten_levels,
            window=window, overlap=overlap, anchors=anchors, num_inference_steps=num_inference_steps,
            num_inversion_steps=num_inversion_steps, inject_steps=inject_steps,
        )
        if inversion is None:
            if video is None:
                raise ValueError("give the source video, or an inversion of it")
            frames = frames_to_tensor(video)
            self.check_inputs(
                frames, config=config, **steps, feature_mode=feature_mode, feature_memory_budget=feature_memory_budget,
                flow_method=flow_method, init=init,
            )
            inversion = self._invert_video(
                frames, config, steps["num_inference_steps"], steps["num_inversion_steps"], steps["inject_steps"],
                generator, flow_method, feature_mode, feature_dtype, feature_memory_budget, trajectories, latents, None, init,
            )
        edited = self.sample(
            inversion, prompt, negative_prompt, guidance_scale=guidance_scale, eta=eta, generator=generator,
            callback_on_step_end=callback_on_step_end,
        )
        del inversion
        result = edited if output_type == "latent" else frames_to_output(self.decode_latents(edited, decode_chunk_size), output_type)
        self.maybe_free_model_hooks()
        return FlattenPipelineOutput(frames=result) if return_dict else (result,)
