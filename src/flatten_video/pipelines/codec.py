"""The VAE between source frames and latent frames: encoding a clip, decoding latents, in chunks
sized by pixels so the VAE's activations do not set the peak at large sizes."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

#: Pixels the VAE encodes or decodes in one call: 8 frames at 512x512. SDXL's VAE at 1024x1024
#: in float32 peaked at 44.8 GiB decoding 8 frames a call and 16.3 GiB at 2 (H200, BENCHMARKS.md).
VAE_CHUNK_PIXELS = 8 * 512 * 512


def vae_chunk_frames(height: int, width: int, pixels: int = VAE_CHUNK_PIXELS) -> int:
    """Frames of ``height`` x ``width`` pixels per VAE call, so that one call holds about ``pixels``
    (at least one frame)."""
    return max(1, pixels // (height * width))


@contextmanager
def vae_precision(vae, upcast: bool):
    """The VAE's dtype for encoding and decoding: float32 inside the block when ``upcast`` and its
    config says ``force_upcast`` (SDXL's overflows in float16)."""
    if not (upcast and getattr(vae.config, "force_upcast", False) and vae.dtype == torch.float16):
        yield vae.dtype
        return
    vae.to(torch.float32)
    try:
        yield torch.float32
    finally:
        vae.to(torch.float16)


@torch.no_grad()
def encode_frames(vae, frames: torch.Tensor, device, *, upcast: bool = False, generator: torch.Generator | None = None,
                  chunk_size: int | None = None) -> torch.Tensor:
    """VAE latents times the scaling factor, (F, 3, H, W) in [0, 1] -> (1, C, F, h, w), an image
    VAE's latent frame per source frame.

    Frames are encoded ``chunk_size`` at a time (default: :func:`vae_chunk_frames`); the posterior
    is sampled once for the whole video, so the chunk size changes no number.
    """
    chunk_size = chunk_size or vae_chunk_frames(*frames.shape[-2:])
    with vae_precision(vae, upcast) as dtype:
        moments = [vae.encode(chunk.to(device, dtype) * 2 - 1).latent_dist.parameters for chunk in frames.split(chunk_size)]
    latents = DiagonalGaussianDistribution(torch.cat(moments)).sample(generator)
    latents = latents * vae.config.scaling_factor
    return latents.permute(1, 0, 2, 3).unsqueeze(0)


@torch.no_grad()
def decode_frames(vae, latents: torch.Tensor, device, spatial_factor: int, *, upcast: bool = False,
                  chunk_size: int | None = None) -> torch.Tensor:
    """(1, C, F, h, w) latents -> (F, 3, H, W) float32 frames in [0, 1], on the CPU, decoded
    ``chunk_size`` frames at a time (default: :func:`vae_chunk_frames`)."""
    chunk_size = chunk_size or vae_chunk_frames(*(side * spatial_factor for side in latents.shape[-2:]))
    latents = latents[0].permute(1, 0, 2, 3) / vae.config.scaling_factor
    with vae_precision(vae, upcast) as dtype:
        frames = [vae.decode(chunk.to(device, dtype)).sample.float().cpu() for chunk in latents.split(chunk_size)]
    return (torch.cat(frames) / 2 + 0.5).clamp(0, 1)
