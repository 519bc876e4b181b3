"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import platform
import time

import torch


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def best_time(fn, repeats: int = 3) -> float:
    """Best wall time of ``repeats`` calls, in seconds (the least disturbed by a noisy machine)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def smooth_flows(frames: int, height: int, width: int, scale: float = 6.0, seed: int = 0) -> torch.Tensor:
    """Random smooth flows (frames-1, 2, H, W) in pixels, like a camera and objects moving."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(frames - 1, 2, 4, 4, generator=generator) * scale
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
