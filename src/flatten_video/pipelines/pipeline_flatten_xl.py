"""FLATTEN text-to-video editing on Stable Diffusion XL and its fine-tunes (docs/architecture.md, Plug-ins)."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMInverseScheduler, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.loaders import StableDiffusionXLLoraLoaderMixin
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .conditioning import Conditioning, tokenize_prompt
from .loading import LoraLoadingMixin, load_pretrained, share_components
from .mixin import FlattenMixin
from .schedule import ddim_pair


class FlattenSDXLPipeline(DiffusionPipeline, StableDiffusionXLLoraLoaderMixin, LoraLoadingMixin, FlattenMixin):
    """Text-to-video editing with FLATTEN on SDXL base and its fine-tunes.

    Same steps and arguments as :class:`~flatten_video.FlattenPipeline` (:class:`FlattenMixin`);
    what differs is how a U-Net row is conditioned: the penultimate hidden states of both text
    encoders side by side, the second encoder's pooled embedding and the size and crop "time ids",
    all repeated for every frame. SDXL has no attention on its latent grid, so flow-guided attention
    runs at its finest attention level, half the latent grid (:meth:`FlattenMixin.default_config`);
    the injection points are those of SDXL's decoder levels (:class:`~flatten_video.InjectionSpec`). The VAE runs
    in float32 when its config says ``force_upcast`` (SDXL's overflows in float16).

    Args:
        vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet: the SDXL components.
        scheduler, inverse_scheduler: as :class:`~flatten_video.FlattenPipeline`'s (any kind of
            scheduler; DDIM from its config, and its inverse unless one is given).
        image_encoder, feature_extractor: accepted so that ``FlattenSDXLPipeline(**xl_pipe.components)``
            works; FLATTEN does not use them.
        force_zeros_for_empty_prompt: an empty prompt conditions with zeros, as SDXL base was
            trained (its unconditional branch, and the inversion's empty prompt).
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->unet->vae"
    _optional_components = ["inverse_scheduler"]
    default_short_side = 1024
    upcast_vae = True

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        text_encoder_2: CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        tokenizer_2: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: DDIMScheduler,
        inverse_scheduler: DDIMInverseScheduler | None = None,
        force_zeros_for_empty_prompt: bool = True,
        image_encoder=None,
        feature_extractor=None,
    ):
        super().__init__()
        scheduler, inverse_scheduler = ddim_pair(scheduler, inverse_scheduler)
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=scheduler,
            inverse_scheduler=inverse_scheduler,
        )
        self.register_to_config(force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.loras: list[tuple[str, float]] = []

    @classmethod
    def from_pipe(cls, pipeline, **components) -> "FlattenSDXLPipeline":
        """As :meth:`FlattenPipeline.from_pipe`, from a loaded ``StableDiffusionXLPipeline``."""
        return share_components(cls, pipeline, components)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "FlattenSDXLPipeline":
        """Load an SDXL checkpoint in diffusers layout, as :meth:`FlattenPipeline.from_pretrained` does."""
        return load_pretrained(super().from_pretrained, "Stable Diffusion XL", pretrained_model_name_or_path, kwargs)

    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, 77, D1 + D2) text embedding and (1, D2') pooled embedding of one prompt."""
        if not prompt and self.config.force_zeros_for_empty_prompt:
            hidden = self.text_encoder.config.hidden_size + self.text_encoder_2.config.hidden_size
            length = self.tokenizer.model_max_length
            embeds = torch.zeros(1, length, hidden, device=self._execution_device, dtype=self.unet.dtype)
            pooled = torch.zeros(1, self.text_encoder_2.config.projection_dim, device=self._execution_device, dtype=self.unet.dtype)
            return embeds, pooled
        hidden_states, pooled = [], None
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            # Both tokenizers cut at 77 tokens: one warning is enough.
            ids = tokenize_prompt(tokenizer, prompt, warn=tokenizer is self.tokenizer).to(self._execution_device)
            output = encoder(ids, output_hidden_states=True)
            hidden_states.append(output.hidden_states[-2])
            pooled = output[0]  # the second encoder's projected pooled embedding
        return torch.cat(hidden_states, dim=-1).to(self.unet.dtype), pooled.to(self.unet.dtype)

    def encode_conditioning(self, prompt: str, height: int, width: int) -> Conditioning:
        """Text, pooled text and time ids (original size, crop corner, target size) of one row."""
        embeds, pooled = self.encode_prompt(prompt)
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], device=embeds.device, dtype=embeds.dtype)
        return Conditioning(embeds, {"text_embeds": pooled, "time_ids": time_ids})
