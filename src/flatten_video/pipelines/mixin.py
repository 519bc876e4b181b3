"""What every FLATTEN pipeline shares (docs/architecture.md): FLATTEN scoped to a call, the
input checks, the model seam, the public steps and a ``__call__`` whose numbered steps read as
the method.

Like diffusers' ``PAGMixin``, :class:`FlattenMixin` is a capability a pipeline class adds; the
pipeline keeps its components and says how one model row is conditioned
(:meth:`FlattenMixin.encode_conditioning`). The denoiser is reached through the pipeline's
backbone (:mod:`flatten_video.backbones`); every model call goes through
:meth:`FlattenMixin.predict_noise`, and guidance branches and the recompute-mode source row are
rows of its batch. How an edit starts is its method's (:mod:`flatten_video.pipelines.methods`);
the VAE is :mod:`~flatten_video.pipelines.codec`'s, the schedule
:mod:`~flatten_video.pipelines.schedule`'s, the loops :mod:`~flatten_video.pipelines.samplers`'.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
from tqdm.auto import tqdm

from .. import defaults
from ..backbones import Backbone, backbone_for
from ..choices import FEATURE_MODES
from ..families import FAMILIES
from ..flow import FLOW_METHODS, estimate_flow
from ..latent_frames import compose_flows
from ..models.attention_backends import check_attention_backend
from ..models.context import FlattenConfig, FlattenContext
from ..models.features import FeatureStore
from ..models.injection import InjectionSpec
from ..timing import timed
from ..trajectories import Trajectories, sample_trajectory_pyramid
from ..validation import check_at_least, check_choice, check_frame_side, check_inject_steps, check_num_frames, check_text
from ..windows import anchor_frames
from .codec import decode_frames, encode_frames
from .conditioning import Conditioning, stack_rows
from .inversion import EditStart, FlattenInversion
from .methods import METHODS, EditRequest, get_method, method_names
from .output import OUTPUT_TYPES, FlattenPipelineOutput, frames_to_output, frames_to_tensor, prompt_list
from .samplers import ddim_sample, guided
from .schedule import check_schedule, resolve_edit, sampling_timesteps
from .windowing import Denoising, plan_runs, process_share


class FlattenMixin:
    """FLATTEN for a diffusers pipeline with a denoiser (``unet``), ``vae``, ``scheduler`` (DDIM)
    and ``inverse_scheduler`` (DDIM inverse) components.

    The host class sets ``vae_scale_factor`` and implements :meth:`encode_conditioning`. Public
    steps can be run one by one: :meth:`prepare_trajectories`, :meth:`encode_video`,
    :meth:`invert`, :meth:`sample`, :meth:`decode_latents`; :meth:`invert_video` runs everything
    before sampling.

    Attributes:
        flatten_context: the :class:`FlattenContext` of the call in progress; None between calls,
            when the denoiser holds its stock processors and norms again.
    """

    flatten_context: FlattenContext | None = None
    #: The dense-attention kernel of diffusers' dispatcher the processors call (:meth:`set_attention_backend`).
    attention_backend: str | None = None
    #: Its family (:data:`flatten_video.families.FAMILIES`): which defaults and options the
    #: command line and the page give it.
    family: str = "sd"
    #: Short side in pixels the model was trained at: the working size when the user sets none;
    #: automatic sides are rounded to multiples of ``size_multiple``.
    default_short_side: int = 512
    size_multiple: int = FAMILIES["sd"].size_multiple
    #: Whether the app runs the text encoder with model CPU offload on a GPU (when it outweighs the denoiser).
    offload_text_encoder: bool = False
    #: Run the VAE in float32 when its config says ``force_upcast`` (SDXL's overflows in float16).
    upcast_vae: bool = False

    #: The component FLATTEN changes (its backbone is looked up by its class).
    denoiser_name: str = "unet"
    #: The sampler this pipeline runs; it takes the editing methods made for it.
    sampler: str = "ddim"

    @property
    def methods(self) -> tuple[str, ...]:
        """The editing methods this pipeline runs (:data:`~flatten_video.pipelines.methods.METHODS`)."""
        return method_names(self.sampler)

    @property
    def backbone(self) -> Backbone:
        """The denoiser as FLATTEN sees it (:func:`~flatten_video.backbones.backbone_for`); cheap,
        made afresh so that a swapped component is always the one used."""
        return backbone_for(getattr(self, self.denoiser_name), self.vae_scale_factor)

    def encode_conditioning(self, prompt: str, height: int, width: int) -> Conditioning:
        """The conditioning of one model row (a video) for ``prompt``, frames of ``height`` x ``width`` px."""
        raise NotImplementedError

    def default_config(self) -> FlattenConfig:
        """The paper's config, with flow-guided attention at the backbone's default levels."""
        return FlattenConfig(levels=self.backbone.default_levels())

    def _conditioning(self, prompt: str, latents: torch.Tensor) -> Conditioning:
        return self.encode_conditioning(prompt, latents.shape[-2] * self.vae_scale_factor, latents.shape[-1] * self.vae_scale_factor)

    def source_conditioning(self, source_prompt: str, latents: torch.Tensor) -> Conditioning:
        """The row of the source video: inversion's, and recompute mode's during sampling, which
        must see what inversion saw."""
        return self._conditioning(source_prompt, latents)

    # -- scope and checks ---------------------------------------------------------------------

    @contextmanager
    def flatten_enabled(
        self,
        config: FlattenConfig,
        num_latent_frames: int,
        trajectories: dict[tuple[int, int], Trajectories],
        features: FeatureStore | None = None,
        phase: str = "",
    ):
        """FLATTEN on the denoiser inside the block, the stock model after it (also on error).

        Yields the :class:`FlattenContext` the processors read, also kept in :attr:`flatten_context`.
        """
        device = self._execution_device
        trajectories = {grid: t.to(device) for grid, t in trajectories.items()}
        context = FlattenContext.from_config(config, num_latent_frames, trajectories, features)
        context.phase, context.attention_backend = phase, self.attention_backend
        with self.backbone.installed(context):
            self.flatten_context = context
            try:
                yield context
            finally:
                self.flatten_context = None

    def set_attention_backend(self, backend: str | None) -> None:
        """The dense attention's kernel, by diffusers' dispatcher name (``"native"``, PyTorch's SDPA,
        the default; ``"flash"``, ``"sage"``, ``"_native_cudnn"``...; None: the dispatcher's active
        one), checked for this device now. Flow-guided attention keeps its own exact kernel."""
        if backend is not None:
            check_attention_backend(backend, str(self._execution_device))
        self.attention_backend = backend

    #: Graphs dynamo may keep for one block class: each shape of block (its level's channels and
    #: tokens, whether it injects, the rows of the phase's batch: 1 inverting, 2 or 3 sampling) is
    #: a graph of its own under the class's one ``forward``. An SD 2.1 edit makes about 18, past
    #: dynamo's default of 8, beyond which the other shapes run uncompiled (dynamo warns once).
    RECOMPILE_LIMIT = 64

    def compile_repeated_blocks(self, **kwargs) -> None:
        """``torch.compile`` of the denoiser's repeated blocks (diffusers' regional compilation: the
        U-Net's ``BasicTransformerBlock``, Wan's ``WanTransformerBlock``): compile time is one block's
        per shape of block. Raises dynamo's recompile limit, for the process, to at least
        :attr:`RECOMPILE_LIMIT`."""
        import torch._dynamo

        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, self.RECOMPILE_LIMIT)
        for name in (self.denoiser_name, f"{self.denoiser_name}_2"):
            model = getattr(self, name, None)
            if model is not None:
                model.compile_repeated_blocks(**kwargs)

    @contextmanager
    def denoising(self, config: FlattenConfig, num_latent_frames: int, trajectories: dict[tuple[int, int], Trajectories],
                  features: FeatureStore | None = None, *, phase: str, steps: int, desc: str):
        """FLATTEN on for a loop of ``steps`` model evaluations of a clip of ``num_latent_frames``
        latent frames, in the windows ``config`` plans, with a progress bar ``desc``.

        Yields:
            The :class:`~flatten_video.pipelines.windowing.Denoising` that evaluates the model.
        """
        with self.flatten_enabled(config, num_latent_frames, trajectories, features, phase=phase) as context:
            runs = plan_runs(config, num_latent_frames, context.trajectories, self._execution_device)
            share = len(process_share(runs)[0])
            with self._progress(steps * share, desc, share) as bar:
                yield Denoising(self.predict_noise, context, runs, bar.update)

    @property
    def injection_spec(self) -> InjectionSpec:
        """Where features are injected in this denoiser; raises a clear ``ValueError`` if nowhere."""
        return self.backbone.injection_points()

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
        method: str | None = None,
        source_prompt: str | None = None,
    ) -> None:
        """Raise ``ValueError`` on inputs that cannot work, before anything runs; checks what is given."""
        if method is not None:  # the rules of options the method does not read do not apply
            options = get_method(method, self.sampler).options
            num_inversion_steps = num_inversion_steps if "num_inversion_steps" in options else None
            inject_steps = inject_steps if "inject_steps" in options else None
        if source_prompt is not None:
            check_text("the source prompt", source_prompt)
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
            backbone = self.backbone
            num_latent_frames = backbone.num_latent_frames(len(frames))  # raises when they do not fit the VAE
            if config is not None and config.windowed(num_latent_frames):
                anchor_frames(num_latent_frames, config.anchors)  # no more anchors than frames
        for name, value in (("num_inference_steps", num_inference_steps), ("num_inversion_steps", num_inversion_steps)):
            if value is not None:
                check_at_least(name, value, 1)
        if inject_steps is not None:
            check_inject_steps(inject_steps, num_inference_steps)
            if inject_steps:
                self.injection_spec  # noqa: B018 (raises when the denoiser has no injection points)
                if num_inversion_steps is not None:
                    check_schedule(self.scheduler, self.inverse_scheduler, num_inference_steps, num_inversion_steps,
                                   inject_steps)

    # -- video in, video out ------------------------------------------------------------------

    def enable_vae_slicing(self) -> None:
        """The VAE encodes and decodes one frame of a chunk at a time (less memory), as diffusers'."""
        self.vae.enable_slicing()

    def disable_vae_slicing(self) -> None:
        self.vae.disable_slicing()

    def enable_vae_tiling(self) -> None:
        """The VAE works on overlapping tiles of large frames (less memory at 1024 px and above)."""
        self.vae.enable_tiling()

    def disable_vae_tiling(self) -> None:
        self.vae.disable_tiling()

    def token_grids(self, height: int, width: int, levels: tuple[int, ...] = (0,)) -> list[tuple[int, int]]:
        """Token grids (h, w) of the backbone's ``levels`` for frames of ``height`` x ``width`` pixels."""
        return self.backbone.token_grids(self.backbone.latent_size(height, width), levels)

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
        """Optical flow of the source frames (F, 3, H, W) in [0, 1] and the trajectories of each
        token grid, over latent frames (the source flows composed to the frames that stand for
        them, :func:`~flatten_video.latent_frames.compose_flows`).

        ``flows``: the frames' forward flows (F-1, 2, H, W) when already estimated;
        ``flatten_levels``: default, the backbone's (:meth:`default_config`).
        """
        if flatten_levels is None:
            flatten_levels = self.default_config().levels
        if flows is None:
            flows = estimate_flow(frames, flow_method, device=self._execution_device, progress=progress)
        flows = compose_flows(flows, self.backbone.temporal_factor)
        seed = generator.initial_seed() if generator is not None else torch.initial_seed()
        cpu_generator = torch.Generator().manual_seed(seed)
        return sample_trajectory_pyramid(flows, self.token_grids(*frames.shape[-2:], flatten_levels), cpu_generator)

    @torch.no_grad()
    def encode_video(
        self, frames: torch.Tensor, generator: torch.Generator | None = None, chunk_size: int | None = None
    ) -> torch.Tensor:
        """VAE latents times the scaling factor: (F, 3, H, W) in [0, 1] -> (1, C, F', h, w)
        (:func:`~flatten_video.pipelines.codec.encode_frames`)."""
        return encode_frames(self.vae, frames, self._execution_device, upcast=self.upcast_vae, generator=generator,
                             chunk_size=chunk_size)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """(1, C, F', h, w) latents -> (F, 3, H, W) float32 frames in [0, 1], on the CPU
        (:func:`~flatten_video.pipelines.codec.decode_frames`)."""
        return decode_frames(self.vae, latents, self._execution_device, self.vae_scale_factor, upcast=self.upcast_vae,
                             chunk_size=chunk_size)

    # -- the model seam ---------------------------------------------------------------------------

    def predict_noise(self, latents: torch.Tensor, timestep: int, conditioning: Conditioning) -> torch.Tensor:
        """The model's prediction for a batch of videos: (B, C, F', h, w) -> (B, C, F', h, w).

        Row b of ``latents`` is conditioned by row b of ``conditioning``.
        """
        return self.backbone.predict(latents, timestep, conditioning, self.extra_unet_kwargs)

    def extra_unet_kwargs(self, sample: torch.Tensor, timestep: int, conditioning: Conditioning, unet_kwargs: dict) -> dict:
        """More keyword arguments of the denoiser call for its input ``sample`` (as the backbone
        feeds it), given the ones ``conditioning`` already makes: a plug-in's (ControlNet
        residuals); none here."""
        return {}

    # -- making the start -------------------------------------------------------------------------

    @torch.no_grad()
    def invert(
        self,
        latents: torch.Tensor,
        trajectories: dict[tuple[int, int], Trajectories],
        *,
        config: FlattenConfig | None = None,
        num_inversion_steps: int = defaults.NUM_INVERSION_STEPS,
        num_inference_steps: int = defaults.NUM_INFERENCE_STEPS,
        inject_steps: int = defaults.INJECT_STEPS,
        feature_mode: str = "auto",
        feature_dtype: torch.dtype | None = None,
        feature_memory_budget: int | None = None,
        source_prompt: str = defaults.SOURCE_PROMPT,
    ) -> FlattenInversion:
        """DDIM inversion of source latents with the source prompt and FLATTEN active (the paper's
        method, :class:`~flatten_video.pipelines.methods.ddim_inversion.DDIMInversion`).

        The model sees the latent at noise level t with timestep t for t = 1, 1 + k, ...,
        1 + (n-2)k (k = 1000 // n for ``num_inversion_steps`` n), and each deterministic step
        moves it to level t + k, as the paper's code does.

        Args:
            latents: (1, C, F', h, w) source latents (:meth:`encode_video`).
            trajectories: (h, w) -> :class:`Trajectories` for the grids where FLATTEN runs.
            config: how FLATTEN runs (default: the paper's); recorded in the inversion, and every
                edit of it uses the same.
            feature_mode, feature_dtype, feature_memory_budget: how source features are held
                (``"auto"``: stored within the budget, else recomputed; None: half of the host's
                available memory).
        """
        self.check_inputs(
            num_inference_steps=num_inference_steps, num_inversion_steps=num_inversion_steps, inject_steps=inject_steps,
            feature_mode=feature_mode, feature_memory_budget=feature_memory_budget, source_prompt=source_prompt,
        )
        request = EditRequest(
            frames=None, config=config or self.default_config(), num_inference_steps=num_inference_steps,
            num_inversion_steps=num_inversion_steps, inject_steps=inject_steps, feature_mode=feature_mode,
            feature_dtype=feature_dtype, feature_memory_budget=feature_memory_budget, source_prompt=source_prompt,
        )
        return get_method("inversion").invert(self, latents, trajectories, request)

    @torch.no_grad()
    def invert_video(
        self,
        video,
        *,
        num_inference_steps: int = defaults.NUM_INFERENCE_STEPS,
        num_inversion_steps: int = defaults.NUM_INVERSION_STEPS,
        inject_steps: int = defaults.INJECT_STEPS,
        generator: torch.Generator | None = None,
        flow_method: str = "raft",
        attention_mode: str = defaults.ATTENTION_MODE,
        flatten_variant: str = defaults.VARIANT,
        flatten_levels: tuple[int, ...] | None = None,
        window: int = defaults.WINDOW,
        overlap: int = defaults.OVERLAP,
        anchors: int = defaults.ANCHORS,
        feature_mode: str = "auto",
        feature_dtype: torch.dtype | None = None,
        feature_memory_budget: int | None = None,
        trajectories: dict[tuple[int, int], Trajectories] | None = None,
        latents: torch.Tensor | None = None,
        flows: torch.Tensor | None = None,
        method: str = defaults.METHOD,
        source_prompt: str = defaults.SOURCE_PROMPT,
        init: str | None = None,
    ) -> EditStart:
        """Everything before sampling: flow, trajectories, and the method's start (for the paper's
        ``"inversion"``: VAE encoding and DDIM inversion).

        Arguments as in the pipeline's ``__call__``; ``flows`` (F-1, 2, H, W) are the source's
        forward flows when already estimated. The result can be edited with many prompts
        (``pipe(inversion=..., prompt=...)`` or :meth:`sample`) and saved with :meth:`EditStart.save`.
        """
        frames = frames_to_tensor(video)
        method = self._method_name(method, init)
        levels = self.default_config().levels if flatten_levels is None else tuple(flatten_levels)
        config = FlattenConfig(attention_mode, flatten_variant, levels, window, overlap, anchors)
        request = EditRequest(
            frames=frames, config=config, num_inference_steps=num_inference_steps, num_inversion_steps=num_inversion_steps,
            inject_steps=inject_steps, generator=generator, flow_method=flow_method, feature_mode=feature_mode,
            feature_dtype=feature_dtype, feature_memory_budget=feature_memory_budget, trajectories=trajectories,
            latents=latents, flows=flows, source_prompt=source_prompt,
        )
        self._check_request(request, method)
        return self._make_start(request, method)

    def _method_name(self, method: str, init: str | None = None) -> str:
        """``method``, or ``init`` (its earlier name) when that is given; one this pipeline runs."""
        if init is not None:
            if method not in (init, defaults.METHOD):
                raise ValueError(f"method={method!r} and init={init!r} disagree: give one of them")
            method = init
        check_choice("editing method", method, tuple(dict.fromkeys(name for _, name in METHODS)))  # a known one
        check_choice(f"method for {type(self).__name__}", method, self.methods)
        return method

    def _check_request(self, request: EditRequest, method: str) -> None:
        self.check_inputs(
            request.frames, config=request.config, num_inference_steps=request.num_inference_steps,
            num_inversion_steps=request.num_inversion_steps, inject_steps=request.inject_steps,
            feature_mode=request.feature_mode, feature_memory_budget=request.feature_memory_budget,
            flow_method=request.flow_method, method=method, source_prompt=request.source_prompt,
        )

    def _make_start(self, request: EditRequest, method_name: str) -> EditStart:
        """The method's start of sampling, after the flow and trajectories it needs."""
        method, timings, device = get_method(method_name, self.sampler), {}, self._execution_device
        trajectories = request.trajectories
        if trajectories is None:
            trajectories, levels = {}, method.trajectory_levels(request.config)
            if levels:
                flows = request.flows
                if flows is None:
                    with timed(timings, "flow", device):
                        flows = estimate_flow(request.frames, request.flow_method, device=device)
                with timed(timings, "trajectories", device):
                    trajectories = self.prepare_trajectories(request.frames, flatten_levels=levels,
                                                             generator=request.generator, flows=flows)
        return method.start(self, request, trajectories, timings)

    # -- sampling ---------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self,
        inversion: EditStart,
        prompt: str,
        negative_prompt: str = "",
        *,
        guidance_scale: float = defaults.GUIDANCE_SCALE,
        eta: float = defaults.ETA,
        generator: torch.Generator | None = None,
        callback_on_step_end: Callable | None = None,
    ) -> torch.Tensor:
        """DDIM sampling from a start with the target prompt, FLATTEN set up as the start records.

        The negative prompt is the unconditional branch of classifier-free guidance (used when
        ``guidance_scale > 1``). During the first ``inversion.inject_steps`` steps the source
        features replace the fresh ones in every row of the batch.

        ``callback_on_step_end(pipe, step, timestep, {"latents": ...})`` is called after every
        step, diffusers-style; a returned dict may replace ``"latents"``.

        Returns:
            (1, C, F', h, w) final latents.
        """
        latents = inversion.latents.to(self._execution_device)
        rows = self._guidance_rows(prompt, negative_prompt, guidance_scale, latents)
        timesteps = sampling_timesteps(self.scheduler, inversion.num_inference_steps)
        return self._sample_with_injection(
            inversion, rows, lambda t: guidance_scale, len(timesteps),
            lambda model: ddim_sample(model, latents, self.scheduler, timesteps, eta=eta, generator=generator,
                                      callback=self._step_callback(callback_on_step_end)),
        )

    def _guidance_rows(self, text: str, negative_prompt: str, scale: float, latents: torch.Tensor) -> Conditioning:
        """The rows of one prompt: (negative, prompt) when guided (``scale > 1``), else the prompt's."""
        rows = self._conditioning(text, latents)
        return Conditioning.cat([self._conditioning(negative_prompt, latents), rows]) if scale > 1.0 else rows

    def _sample_with_injection(self, start: EditStart, rows: Conditioning, guidance: Callable[[float], float],
                               steps: int, sampler: Callable) -> torch.Tensor:
        """What sampling from a start shares whatever the sampler: FLATTEN scoped as the start
        records, the windows, the source features injected in the first ``start.inject_steps``
        steps (stored, or recomputed from a leading source row), guidance, a progress bar.

        Args:
            rows: the guidance rows of the target prompt.
            guidance: the guidance scale at a timestep.
            steps: the model evaluations ``sampler`` makes (for the bar).
            sampler: ``sampler(model)`` runs the loop with ``model(latents, index, t)``, the guided
                prediction of a step, and returns the final latents.
        """
        injects = isinstance(start, FlattenInversion) and start.inject_steps > 0
        recompute = injects and start.feature_mode == "recompute"
        latents = start.latents
        source_row = self.source_conditioning(start.source_prompt, latents) if recompute else None
        store = FeatureStore() if recompute else getattr(start, "features", None)
        with self.denoising(start.config, start.num_latent_frames, start.trajectories, store, phase="sampling",
                            steps=steps, desc="Sampling") as evaluate:

            def model(latents, index, t):
                noise = self._sampling_noise(start, evaluate, index, t, latents, rows, source_row)
                return guided(noise, guidance(t), halves=rows.num_rows > 1)

            return sampler(model)

    #: The tensors ``callback_on_step_end`` may ask for (diffusers' ``_callback_tensor_inputs``).
    _callback_tensor_inputs = ["latents"]

    def check_callback_inputs(self, names) -> None:
        """``callback_on_step_end_tensor_inputs`` names only tensors the callback is given."""
        unknown = [name for name in names if name not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs may name {', '.join(self._callback_tensor_inputs)}; "
                             f"got {', '.join(map(repr, unknown))}")

    def _step_callback(self, callback_on_step_end: Callable | None):
        """diffusers' ``callback_on_step_end(pipe, step, timestep, {"latents": ...})`` as a sampler's
        ``callback(index, t, latents)``: a returned dict may replace the latents."""

        def callback(index, t, latents):
            if callback_on_step_end is not None:
                update = callback_on_step_end(self, index, t, {"latents": latents})
                if update and "latents" in update:
                    return update["latents"]
            return latents

        return callback

    def _sampling_noise(
        self, inversion: EditStart, evaluate: Denoising, step: int, t: int, latents: torch.Tensor, rows: Conditioning,
        source_row: Conditioning | None,
    ) -> torch.Tensor:
        """Noise of every guidance row at sampling step ``step``, (rows, C, F', h, w).

        Three layouts of one model batch: plain rows after the injected steps; rows fed the stored
        features; or (recompute mode) the source latent as a leading row whose fresh features
        every other row takes, dropped from the result. Windows cut every row alike.
        """
        batch = latents.expand(rows.num_rows, *latents.shape[1:])
        if step >= inversion.inject_steps:
            return evaluate(batch, t, rows)
        features = evaluate.context.features
        if source_row is None:
            return evaluate(batch, t, rows, lambda run, frames: features.injecting(run.key(t)))
        source = inversion.source_latents[t].to(latents.device)
        batch, conditioning = stack_rows([(source, source_row), (batch, rows)])
        backbone = self.backbone
        return evaluate(batch, t, conditioning, lambda run, frames: features.sharing(backbone.rows_per_video(frames)))[1:]

    def _progress(self, total: int, desc: str, windows: int = 1):
        """A bar over model evaluations: steps, or steps times windows for a long clip."""
        config = dict(getattr(self, "_progress_bar_config", {}))
        config.setdefault("desc", desc if windows == 1 else f"{desc} ({windows} windows a step)")
        return tqdm(total=total, **config)

    # -- composition ------------------------------------------------------------------------------

    def resolve_edit(
        self,
        inversion: EditStart | None,
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
        """The config and steps of an edit: what the caller gave, else the start's, else the
        paper's (:func:`~flatten_video.pipelines.schedule.resolve_edit`).

        Returns:
            (config, {"num_inference_steps", "num_inversion_steps", "inject_steps"}).
        """
        asked_config = dict(attention_mode=attention_mode, variant=flatten_variant, levels=flatten_levels,
                            window=window, overlap=overlap, anchors=anchors)
        asked_steps = dict(num_inference_steps=num_inference_steps, num_inversion_steps=num_inversion_steps,
                           inject_steps=inject_steps)
        return resolve_edit(inversion, self.default_config(), asked_config, asked_steps)

    # -- the whole edit ---------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        video=None,
        prompt: str | list[str] = "",
        negative_prompt: str | list[str] = "",
        *,
        num_inference_steps: int | None = None,
        num_inversion_steps: int | None = None,
        inject_steps: int | None = None,
        guidance_scale: float = defaults.GUIDANCE_SCALE,
        eta: float = defaults.ETA,
        generator: torch.Generator | None = None,
        flow_method: str = "raft",
        attention_mode: str | None = None,
        flatten_variant: str | None = None,
        flatten_levels: tuple[int, ...] | None = None,
        window: int | None = None,
        overlap: int | None = None,
        anchors: int | None = None,
        feature_mode: str = "auto",
        feature_dtype: torch.dtype | None = None,
        feature_memory_budget: int | None = None,
        trajectories: dict[tuple[int, int], Trajectories] | None = None,
        latents: torch.Tensor | None = None,
        inversion: EditStart | None = None,
        method: str = defaults.METHOD,
        source_prompt: str = defaults.SOURCE_PROMPT,
        init: str | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        decode_chunk_size: int | None = None,
    ):
        """Edit a video: flow, trajectories, the method's start (VAE encoding and inversion for the
        paper's), sampling, decoding.

        Args:
            video: source frames, (F, 3, H, W) tensor in [0, 1], (F, H, W, 3) array or a list of
                PIL images; H and W multiples of 8 (64 for the default U-Net depth), F >= 2.
            prompt: the edit prompt, or a list of them: one video each (``frames[i]``), all sampled
                from one inversion; negative_prompt: the unconditional branch (one, or one each).
            num_inference_steps, num_inversion_steps, inject_steps: the schedule; None takes the
                inversion's, else the paper's (50, 100, 40).
            guidance_scale, eta: the paper's defaults (10, 0).
            generator: seeds the VAE posterior sample and the trajectory sampling.
            flow_method: ``"raft"`` or ``"dis"``.
            attention_mode: ``"spatial"``, ``"dsta"``, ``"flatten"`` or ``"dsta+flatten"``.
            flatten_variant: ``"II"``, ``"I"`` or ``"source-qk"``.
            flatten_levels: U-Net levels where flow-guided attention runs (0: the latent grid; default:
                the finest level with attention, 0 for SD 1.x/2.x and 1 for SDXL).
            window, overlap, anchors: long clips: a clip longer than ``window`` frames is denoised
                in windows of that many frames overlapping by ``overlap``, each joined by
                ``anchors`` frames spread over the clip; ``window=0`` never splits the clip.
                These six default (None) to the inversion's, else ``"dsta+flatten"``, ``"II"``,
                the finest attention level, 32, 8, 2.
            feature_mode: ``"stored"``, ``"recompute"`` (less memory, more compute) or ``"auto"``
                (stored when the features fit ``feature_memory_budget``, else recompute).
            feature_dtype: dtype of stored features (default: the denoiser's, so stored and recomputed
                features, and so an edit and its resumed run, are the same).
            feature_memory_budget: bytes the stored features may take in ``"auto"`` mode; None:
                half of the host's available memory.
            trajectories: precomputed trajectories (skips the optical flow).
            latents: precomputed source latents (1, C, F', h, w) (skips VAE encoding).
            inversion: a start already made (:meth:`invert_video`, :meth:`EditStart.load`); skips
                everything before sampling, and ``video`` may then be None. Asking it for another
                schedule or attention than it was made with is an error.
            method: how the edit starts (:data:`~flatten_video.pipelines.methods.METHODS`):
                ``"inversion"`` (the paper), or ControlVideo's start (``"noise"``: one seeded
                noise for every frame; ``"trajectory-noise"``: one per trajectory), with no
                inversion and nothing injected; ControlVideo pairs it with a ControlNet and
                guidance 12.5. ``init`` is another name for it.
            source_prompt: the prompt the source is inverted with (default: empty, as the paper).
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
            callback_on_step_end, callback_on_step_end_tensor_inputs: diffusers' step callback
                ``(pipe, step, timestep, {"latents": ...})``, and the tensors it asks for (``latents``).
            decode_chunk_size: frames the VAE decodes at a time (default: 8 at 512x512, fewer at
                larger sizes, :func:`~flatten_video.pipelines.codec.vae_chunk_frames`).

        Returns:
            :class:`FlattenPipelineOutput`, or a tuple ``(frames,)`` if not ``return_dict``.
        """
        # 1. Check inputs and resolve the edit's config and schedule
        check_choice("output_type", output_type, OUTPUT_TYPES)
        prompts = prompt_list(prompt, negative_prompt)
        self.check_callback_inputs(callback_on_step_end_tensor_inputs)
        if decode_chunk_size is not None:
            check_at_least("decode_chunk_size", decode_chunk_size, 1)
        method = self._method_name(method, init)
        config, steps = self.resolve_edit(
            inversion, attention_mode=attention_mode, flatten_variant=flatten_variant, flatten_levels=flatten_levels,
            window=window, overlap=overlap, anchors=anchors, num_inference_steps=num_inference_steps,
            num_inversion_steps=num_inversion_steps, inject_steps=inject_steps,
        )
        if inversion is None:
            if video is None:
                raise ValueError("give the source video, or an inversion of it")
            # 2. Prepare the source frames
            request = EditRequest(
                frames=frames_to_tensor(video), config=config, **steps, generator=generator, flow_method=flow_method,
                feature_mode=feature_mode, feature_dtype=feature_dtype, feature_memory_budget=feature_memory_budget,
                trajectories=trajectories, latents=latents, source_prompt=source_prompt,
            )
            self._check_request(request, method)
            # 3. Flow, trajectories and the method's start (the paper: VAE encoding, DDIM inversion)
            inversion = self._make_start(request, method)
        # 4. Denoising loop (per prompt): sampling with the target prompt, source features injected; 5. Decode
        result = self._edit_each(
            prompts, lambda prompt, negative: self.sample(inversion, prompt, negative, guidance_scale=guidance_scale,
                                                          eta=eta, generator=generator,
                                                          callback_on_step_end=callback_on_step_end),
            lambda latents: self.decode_latents(latents, decode_chunk_size), output_type,
        )
        self.maybe_free_model_hooks()
        return FlattenPipelineOutput(frames=result) if return_dict else (result,)

    def _edit_each(self, prompts: list[tuple[str, str]], sample: Callable, decode: Callable, output_type: str):
        """One video per (prompt, negative prompt), all sampled from the same start, decoded
        unless ``output_type="latent"``, batch first."""
        videos = []
        for prompt, negative in prompts:
            latents = sample(prompt, negative)
            videos.append(latents if output_type == "latent" else decode(latents))
        return frames_to_output(videos, output_type)
