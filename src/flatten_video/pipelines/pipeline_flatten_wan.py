"""FLATTEN text-to-video editing on Wan 2.1 (diffusers' ``WanTransformer3DModel``), with FlowEdit
(docs/architecture.md, "Backbones: Wan").

The pipeline shares :class:`~flatten_video.pipelines.mixin.FlattenMixin`'s scope, checks, model
seam, trajectories and windows; what differs is the flow-matching edit: its start is the source
latents (FlowEdit is inversion-free), and sampling integrates the difference between the target
and source velocities at the noised source, FLATTEN on in every model call.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch
from diffusers import AutoencoderKLWan, DiffusionPipeline, WanTransformer3DModel

from ..validation import check_at_least, check_choice, check_text
from .conditioning import Conditioning
from .inversion import EditStart
from .loading import _one_line
from .methods import EditRequest
from .mixin import FlattenMixin
from .output import OUTPUT_TYPES, FlattenPipelineOutput, ModelLoadError, frames_to_output, frames_to_tensor
from .samplers import flowedit, guided
from .schedule import flow_schedule, flow_scheduler
from .windowing import denoise, plan_runs, process_share

#: Defaults that fit Wan 2.1 T2V 1.3B (its 832x480 training size at 81 frames, 16 fps) and FlowEdit.
WAN_DEFAULTS = dict(num_frames=81, height=480, width=832, fps=16, num_inference_steps=50, n_max=35, n_min=0, n_avg=1,
                    guidance_scale=5.0, source_guidance_scale=3.0, max_sequence_length=512)


class FlattenWanPipeline(DiffusionPipeline, FlattenMixin):
    """Video-to-video editing of Wan 2.1 text-to-video checkpoints with FlowEdit and FLATTEN.

    Args:
        tokenizer, text_encoder: UMT5 and its tokenizer.
        vae: ``AutoencoderKLWan``: causal 3-D, 4 source frames per latent frame after the first,
            8x spatially, latents normalised per channel.
        transformer: ``WanTransformer3DModel``.
        scheduler: the checkpoint's scheduler; its shift sets the flow-matching levels.
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    denoiser_name = "transformer"
    default_short_side = WAN_DEFAULTS["height"]
    #: How an edit of a flow model starts, and the self-attention modes it runs (Wan's own
    #: attention is already dense over all frames, so per-frame modes do not exist there).
    sampler = "flow"
    attention_modes = ("dsta", "dsta+flatten")

    def __init__(self, tokenizer, text_encoder, vae: AutoencoderKLWan, transformer: WanTransformer3DModel, scheduler):
        super().__init__()
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                              scheduler=scheduler)
        self.vae_scale_factor = vae.config.scale_factor_spatial

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "FlattenWanPipeline":
        """Load a Wan 2.1 text-to-video checkpoint in diffusers layout (safetensors only unless
        ``use_safetensors=False``); any failure is one :class:`ModelLoadError` line."""
        kwargs.setdefault("use_safetensors", True)
        try:
            pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except (OSError, EnvironmentError, ValueError) as error:
            raise ModelLoadError(f"could not load the Wan model {pretrained_model_name_or_path!r}: give a local folder "
                                 f"or a hub id in diffusers layout with safetensors weights ({_one_line(error)})") from error
        pipe.scheduler = flow_scheduler(dict(pipe.scheduler.config))
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
        return Conditioning(self.encode_prompt(prompt))

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
        source_guidance_scale: float = WAN_DEFAULTS["source_guidance_scale"],
        n_max: int = WAN_DEFAULTS["n_max"],
        n_min: int = WAN_DEFAULTS["n_min"],
        n_avg: int = WAN_DEFAULTS["n_avg"],
        generator: torch.Generator | None = None,
        callback_on_step_end: Callable | None = None,
    ) -> torch.Tensor:
        """FlowEdit from the source latents of ``start`` to ``prompt``, FLATTEN as ``start``
        records; the source and target rows (each with its guidance rows) share every model call.

        Returns:
            (1, 16, F', h, w) edited latents.
        """
        source = start.latents.to(self._execution_device)

        def rows(text: str, scale: float) -> Conditioning:
            cond = self._conditioning(text, source)
            return Conditioning.cat([self._conditioning(negative_prompt, source), cond]) if scale > 1.0 else cond

        source_rows, target_rows = rows(start.source_prompt, source_guidance_scale), rows(prompt, guidance_scale)
        both = Conditioning.cat([source_rows, target_rows])
        timesteps, sigmas = flow_schedule(self.scheduler, start.num_inference_steps)
        frames = start.num_latent_frames
        with self.flatten_enabled(start.config, frames, start.trajectories, None, phase="sampling") as context:
            runs = plan_runs(start.config, frames, context.trajectories, self._execution_device)
            share = len(process_share(runs)[0])
            with self._progress(n_max * share, "FlowEdit", share) as bar:

                def evaluate(batch, conditioning, t):
                    return denoise(self.predict_noise, context, runs, batch, t, conditioning,
                                   lambda run, rows: nullcontext(), bar.update)

                def edit_velocities(z_src, z_tar, index, t):
                    split = source_rows.num_rows
                    batch = torch.cat([z_src.expand(split, *z_src.shape[1:]),
                                       z_tar.expand(target_rows.num_rows, *z_tar.shape[1:])])
                    velocity = evaluate(batch, both, t)
                    return guided(velocity[:split], source_guidance_scale), guided(velocity[split:], guidance_scale)

                def target_velocity(z, index, t):
                    return guided(evaluate(z.expand(target_rows.num_rows, *z.shape[1:]), target_rows, t), guidance_scale)

                return flowedit(edit_velocities, target_velocity, source, timesteps, sigmas, n_max=n_max, n_min=n_min,
                                n_avg=n_avg, generator=generator,
                                callback=self._step_callback(callback_on_step_end))

    @torch.no_grad()
    def __call__(
        self,
        video=None,
        prompt: str = "",
        negative_prompt: str = "",
        *,
        source_prompt: str = "",
        method: str = "flowedit",
        attention_mode: str = "dsta+flatten",
        num_inference_steps: int = WAN_DEFAULTS["num_inference_steps"],
        guidance_scale: float = WAN_DEFAULTS["guidance_scale"],
        source_guidance_scale: float = WAN_DEFAULTS["source_guidance_scale"],
        n_max: int = WAN_DEFAULTS["n_max"],
        n_min: int = WAN_DEFAULTS["n_min"],
        n_avg: int = WAN_DEFAULTS["n_avg"],
        generator: torch.Generator | None = None,
        flow_method: str = "raft",
        flatten_blocks: tuple[int, ...] | None = None,
        window: int = 0,
        overlap: int = 2,
        anchors: int = 2,
        trajectories=None,
        latents: torch.Tensor | None = None,
        inversion: EditStart | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
    ):
        """Edit a video with FlowEdit on Wan, FLATTEN on (``attention_mode="dsta+flatten"``) or off
        (``"dsta"``, Wan's own attention).

        Args:
            video: (F, 3, H, W) tensor in [0, 1], (F, H, W, 3) array or PIL images; F = 4k+1,
                sides multiples of 16 (Wan 2.1 1.3B: 81 frames at 832x480).
            prompt, negative_prompt: the target, and the unconditional branch of both guidances.
            source_prompt: what the source shows (default: empty).
            num_inference_steps: the flow-matching schedule (the scheduler's shift kept).
            n_max: editing steps (the first ``num_inference_steps - n_max`` are skipped);
                n_min: last steps sampled plainly from the target; n_avg: noises averaged per step.
            guidance_scale, source_guidance_scale: guidance of the target and source velocities.
            generator: seeds the VAE sample, the trajectories and FlowEdit's noises.
            flatten_blocks: transformer blocks with flow-guided attention (None: every block).
            window, overlap, anchors: long clips in latent frames (0: the whole clip).
            inversion: a start made before (:meth:`invert_video`): skips the flow and encoding.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.

        Returns:
            :class:`FlattenPipelineOutput` whose ``frames`` are the F edited frames.
        """
        # 1. Check inputs
        check_choice("output_type", output_type, OUTPUT_TYPES)
        method = self._method_name(method)
        frames = None if video is None else frames_to_tensor(video)
        self.check_flowedit(n_max, n_min, n_avg, num_inference_steps)
        if inversion is None:
            if frames is None:
                raise ValueError("give the source video, or a start made from it")
            # 2. Flow, trajectories at the token grid over latent frames, and the source latents
            inversion = self.invert_video(
                frames, num_inference_steps=num_inference_steps, generator=generator, flow_method=flow_method,
                attention_mode=attention_mode, flatten_blocks=flatten_blocks, window=window, overlap=overlap,
                anchors=anchors, trajectories=trajectories, latents=latents, method=method, source_prompt=source_prompt,
            )
        # 3. FlowEdit
        edited = self.sample(
            inversion, prompt, negative_prompt, guidance_scale=guidance_scale, source_guidance_scale=source_guidance_scale,
            n_max=n_max, n_min=n_min, n_avg=n_avg, generator=generator, callback_on_step_end=callback_on_step_end,
        )
        # 4. Decode
        result = edited if output_type == "latent" else frames_to_output(self.decode_latents(edited), output_type)
        self.maybe_free_model_hooks()
        return FlattenPipelineOutput(frames=result) if return_dict else (result,)

    @torch.no_grad()
    def invert_video(self, video, *, num_inference_steps: int = WAN_DEFAULTS["num_inference_steps"], generator=None,
                     flow_method: str = "raft", attention_mode: str = "dsta+flatten",
                     flatten_blocks: tuple[int, ...] | None = None, window: int = 0, overlap: int = 2, anchors: int = 2,
                     trajectories=None, latents=None, flows=None, method: str = "flowedit",
                     source_prompt: str = "") -> EditStart:
        """Everything before FlowEdit: flow, trajectories, the source latents; edit it with many
        prompts (``pipe(inversion=..., prompt=...)``)."""
        from ..models.context import FlattenConfig

        frames = frames_to_tensor(video)
        self.check_source(attention_mode, frames, source_prompt)  # before the config, which would name another rule
        config = FlattenConfig(attention_mode, window=window, overlap=overlap, anchors=anchors, blocks=flatten_blocks)
        check_at_least("num_inference_steps", num_inference_steps, 1)
        self.check_inputs(frames, config=config, flow_method=flow_method, method=self._method_name(method),
                          source_prompt=source_prompt)
        request = EditRequest(frames=frames, config=config, num_inference_steps=num_inference_steps, generator=generator,
                              flow_method=flow_method, trajectories=trajectories, latents=latents, flows=flows,
                              source_prompt=source_prompt)
        return self._make_start(request, method)
