"""FLATTEN text-to-video editing on Stable Diffusion 1.x / 2.x (docs/architecture.md, The method)."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMInverseScheduler, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from transformers import CLIPTextModel, CLIPTokenizer

from .conditioning import Conditioning, tokenize_prompt
from .loading import LoraLoadingMixin, ddim_components, load_pretrained, share_components
from .mixin import FlattenMixin


class FlattenPipeline(DiffusionPipeline, StableDiffusionLoraLoaderMixin, LoraLoadingMixin, FlattenMixin):
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
    def from_pipe(cls, pipeline, **components) -> "FlattenPipeline":
        """A FLATTEN pipeline sharing the modules of a loaded diffusers pipeline of this family
        (``StableDiffusion...Pipeline.from_pretrained(...)``): no weights are copied; the DDIM
        scheduler and its inverse come from its scheduler config."""
        return share_components(cls, pipeline, ddim_components, components)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "FlattenPipeline":
        """Load a Stable Diffusion checkpoint in diffusers layout (hub id or local folder).

        Weights load from safetensors only unless ``use_safetensors=False`` is passed. The
        checkpoint's scheduler config becomes a DDIM scheduler and its inverse. Other keyword
        arguments (``dtype``, or the older ``torch_dtype``; ``variant``, ``local_files_only``...) go to diffusers.
        """
        return load_pretrained(super().from_pretrained, "Stable Diffusion", pretrained_model_name_or_path, kwargs)

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """Text embedding (1, 77, D) of one prompt; warns when it is truncated."""
        ids = tokenize_prompt(self.tokenizer, prompt)
        embeds = self.text_encoder(ids.to(self._execution_device))[0]
        return embeds.to(self.unet.dtype)

    def encode_conditioning(self, prompt: str, height: int, width: int) -> Conditioning:
        """SD conditions a row on the prompt's text embedding alone."""
        return Conditioning(self.encode_prompt(prompt))
