"""FLATTEN text-to-video editing on Stable Diffusion 1.x / 2.x (docs/architecture.md, The method)."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMInverseScheduler, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from transformers import CLIPTextModel, CLIPTokenizer

from .conditioning import Conditioning, tokenize_prompt
from .loading import LoraLoadingMixin, load_pretrained, share_components
from .mixin import FlattenMixin
from .schedule import ddim_pair


class FlattenPipeline(DiffusionPipeline, StableDiffusionLoraLoaderMixin, LoraLoadingMixin, FlattenMixin):
    """Text-to-video editing with FLATTEN on any Stable Diffusion 1.x/2.x checkpoint.

    The U-Net is diffusers' own ``UNet2DConditionModel``; FLATTEN is installed on it for the
    duration of each call and removed after it (:class:`FlattenMixin`), so the U-Net can be shared
    with other pipelines. LoRAs load with :meth:`load_loras` (or diffusers' ``load_lora_weights``):
    PEFT wraps the projections, which FLATTEN's processors call.

    Made from a loaded ``StableDiffusionPipeline`` as ``FlattenPipeline(**sd_pipe.components)`` or
    ``FlattenPipeline.from_pipe(sd_pipe)``, sharing its modules.

    Args:
        vae, text_encoder, tokenizer, unet: the Stable Diffusion components.
        scheduler: the checkpoint's scheduler of any kind; FLATTEN samples with DDIM made from
            its config (betas and prediction type kept).
        inverse_scheduler: a ``DDIMInverseScheduler`` for inversion; by default DDIM's inverse
            from the same config.
        safety_checker, feature_extractor, image_encoder: accepted so that a Stable Diffusion
            pipeline's components can be passed as they are; FLATTEN uses none of them (it runs
            no safety checker and no IP-Adapter).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["inverse_scheduler"]
    #: Modules of a pipeline whose U-Net this one cannot run, and the FLATTEN pipeline that can.
    other_family_modules = {"text_encoder_2": "FlattenSDXLPipeline"}

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: DDIMScheduler,
        inverse_scheduler: DDIMInverseScheduler | None = None,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
    ):
        super().__init__()
        scheduler, inverse_scheduler = ddim_pair(scheduler, inverse_scheduler)
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
        return share_components(cls, pipeline, components)

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
