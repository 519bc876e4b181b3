"""Wall-clock timing of pipeline stages that waits for queued accelerator work."""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch


@contextmanager
def timed(timings: dict, name: str, device: torch.device | str | None = None):
    """Add the seconds the block took to ``timings[name]``; on CUDA, after its kernels finished."""
    start = time.perf_counter()
    yield
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - start, 4)
