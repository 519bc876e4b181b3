"""Offline helpers for tests/test_metrics.py: a tiny random CLIP on disk and synthetic videos."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

CLIP_IMAGE_SIZE = 32
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def save_tiny_clip(folder: Path) -> Path:
    """Write a random-weight CLIPModel (32x32 images) and its processor to ``folder``.

    The tokenizer is a real CLIP BPE tokenizer over a letters-only vocabulary with no merges,
    written by hand so nothing comes from the hub.
    """
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        str(folder / "vocab.json"),
        str(folder / "merges.txt"),
        unk_token="<|endoftext|>",
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": CLIP_IMAGE_SIZE},
        crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=CLIP_IMAGE_SIZE, patch_size=8,
        ),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def texture(height: int, width: int, shift: float = 0.0, *, seed: int = 0, period: int = 64) -> torch.Tensor:
    """A smooth random RGB texture (3, H, W) in [0, 1], periodic with ``period`` pixels, moved
    right by ``shift`` pixels. Rendering at 2x size with 2x the period and shift gives the same
    picture at twice the resolution."""
    generator = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij")
    xs = xs - shift
    image = torch.zeros(3, height, width, dtype=torch.float64)
    for channel in range(3):
        for _ in range(4):
            kx, ky = torch.randint(-3, 4, (2,), generator=generator).tolist()
            if kx == 0 and ky == 0:
                kx = 1
            phase = torch.rand((), generator=generator, dtype=torch.float64) * 2 * math.pi
            image[channel] += torch.sin(2 * math.pi * (kx * xs + ky * ys) / period + phase)
    return (0.5 + image / 10).clamp(0, 1).float()


def moving_texture(frames: int, height: int, width: int, step: float, *, period: int = 64) -> torch.Tensor:
    """(F, 3, H, W): the texture moving right by ``step`` pixels per frame."""
    return torch.stack([texture(height, width, t * step, period=period) for t in range(frames)])


def recolour(video: torch.Tensor) -> torch.Tensor:
    """A fixed per-pixel colour transform (channel mix plus offset), the 'edit'."""
    mix = torch.tensor([[0.2, 0.7, 0.1], [0.6, 0.1, 0.3], [0.1, 0.3, 0.6]])
    return (torch.einsum("oc,fchw->fohw", mix, 1 - video) * 0.9 + 0.05).clamp(0, 1)


def translation_flows(frames: int, height: int, width: int, dx: float, dy: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact (forward, backward) flows of a global translation, each (F-1, 2, H, W)."""
    forward = torch.zeros(frames - 1, 2, height, width)
    forward[:, 0], forward[:, 1] = dx, dy
    return forward, -forward
