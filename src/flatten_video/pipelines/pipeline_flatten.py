"""FLATTEN text-to-video editing on Stable Diffusion 1.x / 2.x (DESIGN.md 1, steps 1-7)."""

from __future__ import annotations

import logging
import os
import pathlib
from typing import Callable

import torch
from diffusers import AutoencoderKL, DDIMInverseScheduler, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from transformers import CLIPTextModel, CLIPTokenizer

from ..trajectories import Trajectories
from ..validation import check_choice
from .conditioning import Conditioning
from .inversion import FlattenInversion
from .mixin import FlattenMixin
from .output import OUTPUT_TYPES, FlattenPipelineOutput, ModelLoadError, frames_to_output, frames_to_tensor

logger = logging.getLogger(__name__)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


class FlattenPipeline(DiffusionPipeline, StableDiffusionLoraLoaderMixin, FlattenMixin):
    """Text-to-video editing with FLATTEN on any Stable Diffusion 1.x/2.x checkpoint.

    The U-Net is diffusers' own ``UNet2DConditionModel``; FLATTEN is installed on it for the
    duration of each call and removed after it (:class:`FlattenMixin`), so the U-Net can be shared
    with other pipelines. LoRAs load with :meth:`load_loras` (or diffusers' ``load_lora_weights``):
    PEFT wraps the projections, which FLATTEN's processors call.

    Args:
        vae, text_encoder, tokenizer, unet: the Stable Diffusion components.
        scheduler: a ``DDIMScheduler`` for sampling.
        inverse_scheduler: a ``DDIMInverseScheduler`` for inversion.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: DDIMScheduler,
        inverse_scheduler: DDIMInverseScheduler,
    ):
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            inverse_scheduler=inverse_scheduler,
        )
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.loras: list[tuple[str, float]] = []  # (source, scale) of each LoRA load_loras applied

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "FlattenPipeline":
        """Load a Stable Diffusion checkpoint in diffusers layout (hub id or local folder).

        Weights load from safetensors only unless ``use_safetensors=False`` is passed. The
        checkpoint's scheduler config becomes a DDIM scheduler and its inverse. Other keyword
        arguments (``torch_dtype``, ``variant``, ``local_files_only``...) go to diffusers.
        """
        kwargs.setdefault("use_safetensors", True)
        try:
            if "scheduler" not in kwargs:
                kwargs["scheduler"] = DDIMScheduler.from_pretrained(
                    pretrained_model_name_or_path,
                    subfolder="scheduler",
                    **{k: kwargs[k] for k in ("local_files_only", "cache_dir", "revision", "token") if k in kwargs},
                )
            kwargs.setdefault("inverse_scheduler", DDIMInverseScheduler.from_config(kwargs["scheduler"].config))
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except (OSError, EnvironmentError, ValueError) as error:
            # One line: the advice first, then diffusers' reason, which may span several lines.
            raise ModelLoadError(
                f"could not load the Stable Diffusion model {pretrained_model_name_or_path!r}: give a hub id "
                "that exists (a first run downloads it; offline, it must be in the Hugging Face cache) or a "
                f"local folder in diffusers layout with safetensors weights ({_one_line(error)})"
            ) from error

    def load_loras(self, sources: list[str | os.PathLike], scale: float = 1.0) -> None:
        """Apply LoRA weights to the U-Net (and the text encoder where they have some).

        Args:
            sources: safetensors files, folders holding one, or hub ids, in diffusers or kohya
                format. Only safetensors are read: nothing is unpickled.
            scale: the weight of every LoRA given here (1: as trained).

        Raises:
            ModelLoadError: a source cannot be found or read, in one line.
        """
        for source in sources:
            if pathlib.Path(source).suffix and not pathlib.Path(source).exists():  # a file name, not a hub id
                raise ModelLoadError(f"could not load the LoRA {str(source)!r}: no such file")
            try:
                self.load_lora_weights(str(source), adapter_name=f"lora{len(self.loras)}", use_safetensors=True)
            except (OSError, EnvironmentError, ValueError, KeyError) as error:
                raise ModelLoadError(
                    f"could not load the LoRA {str(source)!r}: give a .safetensors file, a folder holding one, or a "
                    f"hub id ({_one_line(error)})"
                ) from error
            self.loras.append((str(source), float(scale)))
        if self.loras:
            self.set_adapters([f"lora{i}" for i in range(len(self.loras))], [weight for _, weight in self.loras])

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """Text embedding (1, 77, D) of one prompt; warns when it is truncated."""
        tokens = self.tokenizer(
            prompt, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        untruncated = self.tokenizer(prompt, padding="longest", return_tensors="pt").input_ids
        if untruncated.shape[-1] > tokens.input_ids.shape[-1]:
            removed = self.tokenizer.batch_decode(untruncated[:, self.tokenizer.model_max_length - 1 : -1])
            logger.warning(
                "The prompt is longer than the text encoder takes (%d tokens); this part was dropped: %s",
                self.tokenizer.model_max_length,
                removed[0],
            )
        embeds = self.text_encoder(tokens.input_ids.to(self._execution_device))[0]
        return embeds.to(self.unet.dtype)

    def encode_conditioning(self, prompt: str) -> Conditioning:
        """SD conditions a row on the prompt's text embedding alone."""
        return Conditioning(self.encode_prompt(prompt))

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
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
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
            flatten_levels: U-Net levels where flow-guided attention runs (0: the latent grid).
            window, overlap, anchors: long clips (DESIGN.md 4): a clip longer than ``window`` frames
                is denoised in windows of that many frames overlapping by ``overlap``, each joined
                by ``anchors`` frames spread over the clip; ``window=0`` never splits the clip.
                These six default (None) to the inversion's, else ``"dsta+flatten"``, ``"II"``,
                (0,), 32, 8, 2.
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
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.

        Returns:
            :class:`FlattenPipelineOutput`, or a tuple ``(frames,)`` if not ``return_dict``.
        """
        check_choice("output_type", output_type, OUTPUT_TYPES)
        config, steps = self.resolve_edit(
            inversion, attention_mode=attention_mode, flatten_variant=flatten_variant, flatten_levels=flatten_levels,
            window=window, overlap=overlap, anchors=anchors, num_inference_steps=num_inference_steps, num_inversion_steps=num_inversion_steps, inject_steps=inject_steps,
        )
        if inversion is None:
            if video is None:
                raise ValueError("give the source video, or an inversion of it")
            frames = frames_to_tensor(video)
            self.check_inputs(
                frames, config=config, **steps, feature_mode=feature_mode, feature_memory_budget=feature_memory_budget,
                flow_method=flow_method,
            )
            inversion = self._invert_video(
                frames, config, steps["num_inference_steps"], steps["num_inversion_steps"], steps["inject_steps"],
                generator, flow_method, feature_mode, feature_dtype, feature_memory_budget, trajectories, latents, None,
            )
        edited = self.sample(
            inversion, prompt, negative_prompt, guidance_scale=guidance_scale, eta=eta, generator=generator,
            callback_on_step_end=callback_on_step_end,
        )
        del inversion
        result = edited if output_type == "latent" else frames_to_output(self.decode_latents(edited), output_type)
        self.maybe_free_model_hooks()
        return FlattenPipelineOutput(frames=result) if return_dict else (result,)
