"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import platform
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


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


class AttentionFlops:
    """Counts the floating-point operations of FLATTEN's self-attention while active.

    Wraps the two attention ops the processors call (dense and flow-guided; Stable Diffusion's
    and Wan's) and adds
    4 * N * M * C per video for every softmax attention of N queries over M keys with C channels
    (Q K^T and the weighted sum of values, 2 FLOPs per multiply-add). Cross-attention is left out:
    its cost does not grow with the frames a token sees.

    ``enabled=False`` counts nothing and changes nothing: under ``torch.compile`` the wrappers'
    side effects (counters, clocks, synchronisations) would break and re-trace the graphs.
    """

    def __init__(self, device: str = "cpu", enabled: bool = True):
        self.enabled = enabled
        self.dense = 0
        self.flow_guided = 0
        self.seconds = 0.0  # wall time inside the two ops (synchronized on CUDA)
        self._sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)

    @property
    def total(self) -> int:
        return self.dense + self.flow_guided

    def __enter__(self):
        if not self.enabled:
            return self
        from flatten_video.models import attention

        self._module = attention
        self._originals = (attention.multihead_attention, attention.flow_guided_attention)
        dense_op, flow_op = self._originals

        def timed(op, *args, **kwargs):
            self._sync()
            start = time.perf_counter()
            out = op(*args, **kwargs)
            self._sync()
            self.seconds += time.perf_counter() - start
            return out

        def dense(query, key, value, heads, frames=1, backend=None):
            rows, tokens, channels = query.shape
            self.dense += 4 * (rows // frames) * (frames * tokens) ** 2 * channels
            return timed(dense_op, query, key, value, heads, frames, backend)

        def flow_guided(hidden, trajectories, heads, **kwargs):
            batch, _, channels = hidden.shape
            self.flow_guided += sum(4 * batch * g.shape[0] * g.shape[1] ** 2 * channels for g in trajectories.groups)
            return timed(flow_op, hidden, trajectories, heads, **kwargs)

        attention.multihead_attention, attention.flow_guided_attention = dense, flow_guided

        from flatten_video.models import wan_attention

        self._wan = (wan_attention.dispatch_attention_fn, wan_attention.flow_guided_attention)
        wan_dense_op = self._wan[0]

        def wan_dense(query, key, value, **kwargs):  # (B, N, heads, d): Wan's dense attention
            batch, tokens, heads, channels = query.shape
            self.dense += 4 * batch * tokens * key.shape[1] * heads * channels
            return timed(wan_dense_op, query, key, value, **kwargs)

        wan_attention.dispatch_attention_fn, wan_attention.flow_guided_attention = wan_dense, flow_guided
        return self

    def __exit__(self, *exc):
        if not self.enabled:
            return
        from flatten_video.models import wan_attention

        self._module.multihead_attention, self._module.flow_guided_attention = self._originals
        wan_attention.dispatch_attention_fn, wan_attention.flow_guided_attention = self._wan


class PeakMemory:
    """Peak resident memory of this process above its level at the start, sampled every
    millisecond by a thread (CPU runs); on CUDA, torch's peak allocated bytes."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self.peak = 0

    @staticmethod
    def _rss() -> int:
        import os

        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        import gc
        import threading

        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return self
        self._start = self._rss()
        self._running = True

        def sample():
            while self._running:
                self.peak = max(self.peak, self._rss() - self._start)
                time.sleep(0.001)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
            return
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, self._rss() - self._start)


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensors alive inside the block: each op's fresh outputs (views and in-place
    results share their input's storage and are not counted again) until they are freed."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {id(a) for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and id(tensor) not in inputs and not tensor._is_view():
                nbytes = tensor.untyped_storage().nbytes()
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                weakref.finalize(tensor, self._free, nbytes)
        return out
