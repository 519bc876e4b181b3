"""FLATTEN text-to-video editing on Wan 2.1 (diffusers' ``WanTransformer3DModel``), with FlowEdit
or the paper's inversion (docs/architecture.md, "Backbones: Wan").

The pipeline shares :class:`~flatten_video.pipelines.mixin.FlattenMixin`'s scope, checks, model
seam, trajectories and windows; what differs is the flow-matching edit. ``flowedit`` starts from
the source latents (it is inversion-free) and integrates the difference between the target and
source velocities at the noised source; ``inversion`` runs the flow ODE backwards from the source
with the source prompt, then samples from there with the target prompt, the source's
self-attention query and key injected during the first steps. FLATTEN is on in every model call
of both (``attention_mode="dsta+flatten"``) or off (``"dsta"``).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
from diffusers import AutoencoderKLWan, DiffusionPipeline, WanTransformer3DModel
from diffusers.loaders import WanLoraLoaderMixin

from .. import defaults
from ..backbones.wan import WanBackbone
from ..choices import METHOD_OPTIONS
from ..families import FAMILIES
from ..latent_frames import latent_window
from ..validation import check_at_least, check_choice, check_text
from .conditioning import Conditioning
from .inversion import EditStart
from .loading import LoraLoadingMixin, _one_line, dtype_kwargs, share_components
from .methods import EditRequest
from .mixin import FlattenMixin
from .output import OUTPUT_TYPES, FlattenPipelineOutput, ModelLoadError, frames_to_tensor, prompt_list
from .samplers import euler_sample, flowedit, guided
from .schedule import flow_schedule, flow_scheduler

#: Defaults that fit Wan 2.1 T2V 1.3B and its methods (:data:`flatten_video.defaults.WAN`).
WAN_DEFAULTS = defaults.WAN
#: The options only one method reads, with their defaults on Wan.
METHOD_DEFAULTS = {method: {name: WAN_DEFAULTS[name] for name in names if name in WAN_DEFAULTS}
                   for method, names in METHOD_OPTIONS.items()}


def method_options(method: str, **given) -> dict:
    """The options of ``method`` (:data:`METHOD_DEFAULTS`): those ``given`` (not None), the
    method's defaults for the rest; ``ValueError`` for a given option another method reads."""
    own = METHOD_DEFAULTS.get(method, {})
    for name, value in given.items():
        if value is not None and name not in own:
            owner = next((m for m, names in METHOD_OPTIONS.items() if name in names), None)
            whose = f"the {owner} method's" if owner else "not an option here"
            raise ValueError(f"{name} is {whose}; method={method!r} does not take it")
    return {name: given[name] if given.get(name) is not None else default for name, default in own.items()}


class FlattenWanPipeline(DiffusionPipeline, WanLoraLoaderMixin, LoraLoadingMixin, FlattenMixin):
    """Video-to-video editing of Wan 2.1 and Wan 2.2 A14B text-to-video checkpoints with FlowEdit or
    inversion, and FLATTEN. LoRAs of the transformer load with :meth:`load_loras` (diffusers'
    ``load_lora_weights``).

    Args:
        tokenizer, text_encoder: UMT5 and its tokenizer.
        vae: ``AutoencoderKLWan``: causal 3-D, 4 source frames per latent frame after the first,
            8x spatially, latents normalised per channel.
        transformer: ``WanTransformer3DModel`` (Wan 2.2 A14B: the high-noise expert).
        scheduler: the checkpoint's scheduler of any kind (Wan's released ones are UniPC); FlowEdit
            and the inversion take plain flow-matching Euler steps along its shifted levels.
        transformer_2, boundary_ratio: Wan 2.2 A14B's low-noise expert and where it takes over.
    """

    model_cpu_offload_seq = "text_encoder->transformer->transformer_2->vae"
    _optional_components = ["transformer_2"]
    denoiser_name = "transformer"
    #: Its family (:data:`flatten_video.families.FAMILIES`) and working size.
    family = "wan"
    default_short_side = WAN_DEFAULTS["height"]
    size_multiple = FAMILIES["wan"].size_multiple
    #: UMT5-XXL (5.7B parameters) outweighs the 1.3B transformer: on a GPU the app runs it with
    #: model CPU offload, so its memory is given back before the transformer runs.
    offload_text_encoder = True
    #: The sampler its methods are made for, and the self-attention modes it runs.
    sampler = "flow"
    attention_modes = FAMILIES["wan"].attention_modes

    def __init__(self, tokenizer, text_encoder, vae: AutoencoderKLWan, transformer: WanTransformer3DModel, scheduler,
                 transformer_2: WanTransformer3DModel | None = None, boundary_ratio: float | None = None):
        super().__init__()
        if transformer_2 is not None and boundary_ratio is None:
            raise ValueError("a two-expert Wan checkpoint needs boundary_ratio (where transformer_2 takes over; "
                             "a WanPipeline's is wan_pipe.config.boundary_ratio)")
        scheduler = flow_scheduler(dict(scheduler.config))
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                              scheduler=scheduler, transformer_2=transformer_2)
        self.register_to_config(boundary_ratio=boundary_ratio)
        self.vae_scale_factor = vae.config.scale_factor_spatial
        self.loras: list[tuple[str, float]] = []

    @property
    def backbone(self) -> WanBackbone:
        """The transformer as FLATTEN sees it; Wan 2.2 A14B's two experts both get FLATTEN, the
        low-noise one (``transformer_2``) denoising below ``boundary_ratio`` x the training
        timesteps, as in diffusers' Wan pipeline."""
        if self.transformer_2 is None:
            return WanBackbone(self.transformer, self.vae_scale_factor)
        boundary = self.config.boundary_ratio * self.scheduler.config.num_train_timesteps
        return WanBackbone(self.transformer, self.vae_scale_factor, self.transformer_2, boundary)

    @classmethod
    def from_pipe(cls, pipeline, **components) -> "FlattenWanPipeline":
        """A FLATTEN pipeline sharing the modules of a loaded diffusers ``WanPipeline``: no
        weights are copied; the flow-matching scheduler keeps its config's shift."""
        return share_components(cls, pipeline, components)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "FlattenWanPipeline":
        """Load a Wan 2.1 text-to-video checkpoint in diffusers layout (safetensors only unless
        ``use_safetensors=False``); any failure is one :class:`ModelLoadError` line."""
        kwargs.setdefault("use_safetensors", True)
        try:
            pipe = super().from_pretrained(pretrained_model_name_or_path, **dtype_kwargs(kwargs))
        except (OSError, EnvironmentError, ValueError) as error:
            raise ModelLoadError(f"could not load the Wan model {pretrained_model_name_or_path!r}: give a local folder "
                                 f"or a hub id in diffusers layout with safetensors weights ({_one_line(error)})") from error
        return pipe

    # -- text and video ---------------------------------------------------------------------------

    def encode_prompt(self, prompt: str, max_sequence_length: int = WAN_DEFAULTS["max_sequence_length"]) -> torch.Tensor:
        """(1, L, D) UMT5 embedding of one prompt, zero past its tokens (as Wan was trained)."""
        tokens = self.tokenizer([prompt], padding="max_length", max_length=max_sequence_length, truncation=True,
                                add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        device = self._execution_device
        embeds = self.text_encoder(tokens.input_ids.to(device), tokens.attention_mask.to(device)).last_hidden_state
        length = int(tokens.attention_mask.sum())
        embeds = embeds.to(self.transformer.dtype)
        embeds[:, length:] = 0
        return embeds

    def encode_conditioning(self, prompt: str, height: int, width: int) -> Conditioning:
        """The row of ``prompt``; inside :meth:`sample` each text is encoded once (its negative,
        source and target prompts often repeat one another, and UMT5-XXL is 5.7B parameters)."""
        memo = self._embeddings
        if memo is None:
            return Conditioning(self.encode_prompt(prompt))
        if prompt not in memo:
            memo[prompt] = self.encode_prompt(prompt)
        return Conditioning(memo[prompt])

    _embeddings: dict | None = None

    @contextmanager
    def _each_text_once(self):
        self._embeddings = {}
        try:
            yield
        finally:
            self._embeddings = None

    def _latent_stats(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, self.vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(self.vae.config.latents_mean).view(shape).to(latents.device, latents.dtype)
        std = torch.tensor(self.vae.config.latents_std).view(shape).to(latents.device, latents.dtype)
        return mean, std

    @torch.no_grad()
    def encode_video(self, frames: torch.Tensor, generator: torch.Generator | None = None, chunk_size=None) -> torch.Tensor:
        """(F, 3, H, W) in [0, 1], F = 4k+1 -> normalised latents (1, 16, F', H/8, W/8), F' = k+1.
        The causal VAE encodes the clip as a whole (it cannot run frame by frame)."""
        video = (frames.to(self._execution_device, self.vae.dtype) * 2 - 1).permute(1, 0, 2, 3).unsqueeze(0)
        latents = self.vae.encode(video).latent_dist.sample(generator)
        mean, std = self._latent_stats(latents)
        return (latents - mean) / std

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, chunk_size=None) -> torch.Tensor:
        """(1, 16, F', h, w) normalised latents -> (F, 3, H, W) float32 frames in [0, 1] on the CPU."""
        latents = latents.to(self._execution_device, self.vae.dtype)
        mean, std = self._latent_stats(latents)
        video = self.vae.decode(latents * std + mean).sample[0].permute(1, 0, 2, 3)
        return (video.float().cpu() / 2 + 0.5).clamp(0, 1)

    # -- the edit ---------------------------------------------------------------------------------

    @staticmethod
    def check_flowedit(n_max: int, n_min: int, n_avg: int, num_inference_steps: int) -> None:
        """FlowEdit's steps: 0 <= n_min <= n_max <= num_inference_steps, at least one noise."""
        check_at_least("num_inference_steps", num_inference_steps, 1)
        check_at_least("n_avg", n_avg, 1)
        check_at_least("n_min", n_min, 0)
        if not n_min <= n_max <= num_inference_steps:
            raise ValueError(f"FlowEdit needs 0 <= n_min <= n_max <= num_inference_steps, got n_min={n_min}, "
                             f"n_max={n_max}, num_inference_steps={num_inference_steps}")

    def check_source(self, attention_mode: str, frames: torch.Tensor, source_prompt: str) -> None:
        """Wan's rules for a start, before any work: its attention modes and frames the VAE and
        the patch fit (4k+1 frames, checked by :meth:`check_inputs`; sides multiples of 16)."""
        check_choice("attention mode for Wan", attention_mode, self.attention_modes)
        check_text("the source prompt", source_prompt)
        if frames is not None:
            multiple = self.backbone.side_multiple
            for name, side in (("height", frames.shape[-2]), ("width", frames.shape[-1])):
                if side % multiple:
                    raise ValueError(f"the frame {name} {side} is not a multiple of {multiple} (Wan's VAE and patch)")

    @torch.no_grad()
    def sample(
        self,
        start: EditStart,
        prompt: str,
        negative_prompt: str = "",
        *,
        guidance_scale: float = WAN_DEFAULTS["guidance_scale"],
        guidance_scale_2: float | None = None,
        source_guidance_scale: float | None = None,
        n_max: int | None = None,
        n_min: int | None = None,
        n_avg: int | None = None,
        generator: torch.Generator | None = None,
        callback_on_step_end: Callable | None = None,
    ) -> torch.Tensor:
        """The edit from ``start`` to ``prompt`` by the method that made it, FLATTEN as ``start``
        records: FlowEdit from the source latents, or flow-matching sampling from an inversion.

        Args:
            guidance_scale, guidance_scale_2: as :meth:`__call__`'s.
            source_guidance_scale, n_max, n_min, n_avg: FlowEdit's (None: its defaults); an
                inversion refuses them.

        Returns:
            (1, 16, F', h, w) edited latents.
        """
        guidance = self._guidance(guidance_scale, guidance_scale_2)
        options = self._sampling_options(start.method, start.num_inference_steps, source_guidance_scale=source_guidance_scale,
                                         n_max=n_max, n_min=n_min, n_avg=n_avg)
        return self._sample(start, prompt, negative_prompt, guidance, generator, callback_on_step_end, options)

    def _guidance(self, guidance_scale: float, guidance_scale_2: float | None) -> TargetGuidance:
        """The target's guidance at each timestep: ``guidance_scale``, and ``guidance_scale_2``
        where Wan 2.2 A14B's low-noise expert denoises (diffusers' rule); ``ValueError`` for a
        ``guidance_scale_2`` on a one-expert checkpoint."""
        check_second_guidance("guidance_scale_2", guidance_scale_2, two_experts=self.transformer_2 is not None)
        return TargetGuidance(guidance_scale, guidance_scale if guidance_scale_2 is None else guidance_scale_2,
                              self.backbone)

    def _sampling_options(self, method: str, num_inference_steps: int, **given) -> dict:
        """The sampling options of ``method`` (FlowEdit's, its defaults filled; an inversion takes
        none), the others' refused and FlowEdit's steps checked: once per call."""
        options = method_options(method, **given)
        options.pop("inject_steps", None)  # the start's, not sampling's
        if method == "flowedit":
            self.check_flowedit(options["n_max"], options["n_min"], options["n_avg"], num_inference_steps)
        return options

    def _sample(self, start: EditStart, prompt: str, negative_prompt: str, guidance: TargetGuidance, generator,
                callback_on_step_end, options: dict) -> torch.Tensor:
        """:meth:`sample` with its guidance and options resolved and checked."""
        callback = self._step_callback(callback_on_step_end)
        with self._each_text_once():
            if start.method == "flowedit":
                return self._flowedit(start, prompt, negative_prompt, guidance, generator, callback, **options)
            return self._sample_inverted(start, prompt, negative_prompt, guidance, callback)

    def _flowedit(self, start: EditStart, prompt: str, negative_prompt: str, guidance: TargetGuidance, generator,
                  callback, *, source_guidance_scale: float, n_max: int, n_min: int, n_avg: int) -> torch.Tensor:
        """FlowEdit from the source latents; the source and target rows (each with its guidance
        rows) share every model call."""
        source = start.latents.to(self._execution_device)
        source_rows = self._guidance_rows(start.source_prompt, negative_prompt, source_guidance_scale, source)
        target_rows = self._guidance_rows(prompt, negative_prompt, guidance.most, source)
        halves = target_rows.num_rows > 1
        both = Conditioning.cat([source_rows, target_rows])
        timesteps, sigmas = flow_schedule(self.scheduler, start.num_inference_steps)
        calls = (n_max - n_min) * n_avg + n_min  # editing steps average n_avg noises; plain ones call once
        with self.denoising(start.config, start.num_latent_frames, start.trajectories, phase="sampling", steps=calls,
                            desc="FlowEdit") as evaluate:

            def edit_velocities(z_src, z_tar, index, t):
                split = source_rows.num_rows
                batch = torch.cat([z_src.expand(split, *z_src.shape[1:]),
                                   z_tar.expand(target_rows.num_rows, *z_tar.shape[1:])])
                velocity = evaluate(batch, t, both)
                return guided(velocity[:split], source_guidance_scale), guided(velocity[split:], guidance(t), halves)

            def target_velocity(z, index, t):
                return guided(evaluate(z.expand(target_rows.num_rows, *z.shape[1:]), t, target_rows), guidance(t), halves)

            return flowedit(edit_velocities, target_velocity, source, timesteps, sigmas, n_max=n_max, n_min=n_min,
                            n_avg=n_avg, generator=generator, callback=callback)

    def _sample_inverted(self, start: EditStart, prompt: str, negative_prompt: str, guidance: TargetGuidance,
                         callback) -> torch.Tensor:
        """Euler sampling of the flow ODE from the inverted noise with the target prompt; during
        the first ``start.inject_steps`` steps the source latent of the step leads the batch and
        every row takes its self-attention query and key (recomputed, never stored)."""
        latents = start.latents.to(self._execution_device)
        rows = self._guidance_rows(prompt, negative_prompt, guidance.most, latents)
        timesteps, sigmas = flow_schedule(self.scheduler, start.num_inference_steps)
        return self._sample_with_injection(start, rows, guidance, len(timesteps),
                                           lambda model: euler_sample(model, latents, timesteps, sigmas, callback=callback))

    @torch.no_grad()
    def __call__(
        self,
        video=None,
        prompt: str | list[str] = "",
        negative_prompt: str | list[str] = "",
        *,
        source_prompt: str = "",
        method: str = WAN_DEFAULTS["method"],
        attention_mode: str = "dsta+flatten",
        num_inference_steps: int = WAN_DEFAULTS["num_inference_steps"],
        guidance_scale: float = WAN_DEFAULTS["guidance_scale"],
        guidance_scale_2: float | None = None,
        source_guidance_scale: float | None = None,
        n_max: int | None = None,
        n_min: int | None = None,
        n_avg: int | None = None,
        inject_steps: int | None = None,
        generator: torch.Generator | None = None,
        flow_method: str = "raft",
        flatten_blocks: tuple[int, ...] | None = None,
        window: int = WAN_DEFAULTS["window"],
        overlap: int = WAN_DEFAULTS["overlap"],
        anchors: int = WAN_DEFAULTS["anchors"],
        trajectories=None,
        latents: torch.Tensor | None = None,
        inversion: EditStart | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
    ):
        """Edit a video on Wan with FlowEdit or inversion, FLATTEN on (``attention_mode="dsta+flatten"``)
        or off (``"dsta"``, Wan's own attention).

        Args:
            video: (F, 3, H, W) tensor in [0, 1], (F, H, W, 3) array or PIL images; F = 4k+1,
                sides multiples of 16 (Wan 2.1 1.3B: 81 frames at 832x480).
            prompt, negative_prompt: the target, and the unconditional branch of every guidance; a
                list of prompts edits the video once per prompt from one start (``frames[i]``).
            source_prompt: what the source shows (default: empty).
            method: ``"flowedit"`` (inversion-free) or ``"inversion"`` (ODE inversion, then
                sampling with the source's self-attention query and key injected).
            num_inference_steps: the flow-matching schedule (the scheduler's shift kept).
            guidance_scale: the target's guidance.
            guidance_scale_2: Wan 2.2 A14B's: the target's guidance where the low-noise expert
                denoises (None: ``guidance_scale``), as in diffusers' ``WanPipeline``.
            source_guidance_scale, n_max, n_min, n_avg: FlowEdit's: the source velocity's guidance,
                the editing steps (the first ``num_inference_steps - n_max`` are skipped), the
                last steps sampled plainly from the target, noises averaged per step (None: 3, 35,
                0, 1).
            inject_steps: inversion's: sampling steps that get the source's query and key (None: 40).
            generator: seeds the VAE sample, the trajectories and FlowEdit's noises.
            flatten_blocks: transformer blocks with flow-guided attention (None: every block).
            window, overlap: long clips: source frames per window (4k+1; 0: the whole clip) and
                source frames shared by neighbours (a multiple of 4); anchors: latent frames
                spread over the clip that join every window.
            inversion: a start made before (:meth:`invert_video`): skips the flow and encoding.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.

        Returns:
            :class:`FlattenPipelineOutput` whose ``frames[0]`` is the edited video of F frames.
        """
        # 1. Check inputs
        check_choice("output_type", output_type, OUTPUT_TYPES)
        prompts = prompt_list(prompt, negative_prompt)
        self.check_callback_inputs(callback_on_step_end_tensor_inputs)
        guidance = self._guidance(guidance_scale, guidance_scale_2)
        method = self._method_name(inversion.method if inversion is not None else method)
        frames = None if video is None else frames_to_tensor(video)
        steps = inversion.num_inference_steps if inversion is not None else num_inference_steps
        sampling = self._sampling_options(method, steps, inject_steps=inject_steps, source_guidance_scale=source_guidance_scale,
                                          n_max=n_max, n_min=n_min, n_avg=n_avg)
        if inversion is None:
            if frames is None:
                raise ValueError("give the source video, or a start made from it")
            # 2. Flow, trajectories at the token grid over latent frames, and the start
            inversion = self.invert_video(
                frames, num_inference_steps=num_inference_steps, inject_steps=inject_steps, generator=generator,
                flow_method=flow_method, attention_mode=attention_mode, flatten_blocks=flatten_blocks, window=window,
                overlap=overlap, anchors=anchors, trajectories=trajectories, latents=latents, method=method,
                source_prompt=source_prompt,
            )
        elif inject_steps is not None and inject_steps != inversion.inject_steps:
            raise ValueError(f"this inversion injects {inversion.inject_steps} steps: leave inject_steps out, or "
                             "invert again with the new value")
        # 3. The edit (per prompt): FlowEdit, or sampling from the inversion; 4. Decode
        result = self._edit_each(
            prompts, lambda prompt, negative: self._sample(inversion, prompt, negative, guidance, generator,
                                                           callback_on_step_end, sampling),
            self.decode_latents, output_type,
        )
        self.maybe_free_model_hooks()
        return FlattenPipelineOutput(frames=result) if return_dict else (result,)

    @torch.no_grad()
    def invert_video(self, video, *, num_inference_steps: int = WAN_DEFAULTS["num_inference_steps"],
                     inject_steps: int | None = None, generator=None, flow_method: str = "raft",
                     attention_mode: str = "dsta+flatten", flatten_blocks: tuple[int, ...] | None = None,
                     window: int = WAN_DEFAULTS["window"], overlap: int = WAN_DEFAULTS["overlap"],
                     anchors: int = WAN_DEFAULTS["anchors"], trajectories=None, latents=None, flows=None,
                     method: str = WAN_DEFAULTS["method"], source_prompt: str = "") -> EditStart:
        """Everything before the edit: flow, trajectories, the source latents and (``inversion``)
        the ODE inversion; edit it with many prompts (``pipe(inversion=..., prompt=...)``).
        Arguments as in ``__call__``."""
        from ..models.context import FlattenConfig

        frames = frames_to_tensor(video)
        method = self._method_name(method)
        inject_steps = method_options(method, inject_steps=inject_steps).get("inject_steps", 0)
        self.check_source(attention_mode, frames, source_prompt)  # before the config, which would name another rule
        latent_frames_window, latent_overlap = latent_window(window, overlap, self.backbone.temporal_factor)
        config = FlattenConfig(attention_mode, window=latent_frames_window, overlap=latent_overlap, anchors=anchors,
                               blocks=flatten_blocks)
        check_at_least("num_inference_steps", num_inference_steps, 1)
        self.check_inputs(frames, config=config, num_inference_steps=num_inference_steps, inject_steps=inject_steps,
                          flow_method=flow_method, method=method, source_prompt=source_prompt)
        request = EditRequest(frames=frames, config=config, num_inference_steps=num_inference_steps,
                              inject_steps=inject_steps, generator=generator, flow_method=flow_method,
                              trajectories=trajectories, latents=latents, flows=flows, source_prompt=source_prompt)
        return self._make_start(request, method)


@dataclass(frozen=True)
class TargetGuidance:
    """The target's guidance scale at a timestep: ``high`` where the high-noise transformer
    denoises, ``low`` where Wan 2.2 A14B's low-noise expert does (the backbone's hand-over)."""

    high: float
    low: float
    backbone: WanBackbone

    @property
    def most(self) -> float:
        """The largest scale: the guidance rows are made when any step is guided."""
        return max(self.high, self.low)

    def __call__(self, timestep: float) -> float:
        return self.high if self.backbone.expert_for(float(timestep)) is self.backbone.denoiser else self.low


def check_second_guidance(name: str, value: float | None, *, two_experts: bool) -> None:
    """``ValueError`` for a low-noise expert's guidance (``name``) on a one-expert checkpoint."""
    if value is not None and not two_experts:
        raise ValueError(f"{name} is the low-noise expert's guidance of a two-expert checkpoint (Wan 2.2 A14B); "
                         "this one has one transformer: leave it out")
