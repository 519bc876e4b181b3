"""Plug-and-play feature injection (docs/architecture.md, The method, step 6): the store that records and hands back features.

During inversion the source video's features are recorded at the timesteps that sampling will
visit; during the first ``inject_steps`` of sampling they replace the freshly computed ones, in
both halves of the guidance batch.

Two ways to have the source features at sampling time:

- ``"stored"``: keep each feature (one copy, since the guidance halves of the paper's inversion
  are identical) in ``storage_dtype``: on the accelerator when the whole store fits half of its
  free memory (no copies at all), else on the host (:func:`feature_placement`). Host copies are
  pageable, so each waits for the accelerator: page-locked ones would not, but PyTorch's pinned
  allocator rounds every block up to a power of two, up to twice the host memory of a store that
  is tens of GB at the paper's setting.
- ``"recompute"``: keep only the latents that inversion fed to the U-Net at those timesteps, and
  put them in front of the sampling batch, so the source features are computed afresh in the same
  U-Net call and handed to the other rows.

``"auto"`` picks one of them during inversion: ``"stored"`` when the features fit the accelerator's
budget or the host's (by default half of the host's available memory), else ``"recompute"``.
Which layers are recorded is :class:`~flatten_video.models.injection.InjectionSpec`'s rule.
"""

from __future__ import annotations

import os
from collections.abc import Hashable
from contextlib import contextmanager

import torch


def available_memory(meminfo: str | os.PathLike = "/proc/meminfo") -> int | None:
    """Bytes of host memory available to new allocations, or None when it cannot be told.

    Linux's MemAvailable (free memory plus what the page cache would give back) first; then the
    free pages, which miss reclaimable cache and so underestimate; then the physical pages, an
    overestimate that still beats no figure.
    """
    try:
        with open(meminfo) as lines:
            for line in lines:
                key, _, value = line.partition(":")
                if key == "MemAvailable":
                    amount, *unit = value.split()  # "  12345678 kB"
                    return int(amount) * (1024 if unit == ["kB"] else 1)
    except (OSError, ValueError):
        pass
    for pages in ("SC_AVPHYS_PAGES", "SC_PHYS_PAGES"):
        try:
            total = os.sysconf(pages) * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):  # no sysconf (Windows) or no such name
            continue
        if total > 0:
            return total
    return None


def feature_budget(feature_memory_budget: int | None = None) -> int | None:
    """Bytes the stored features of ``feature_mode="auto"`` may take; None for no limit.

    Half of the host's available memory by default: the rest is left to the models, the frames
    and whatever else runs on the host.
    """
    if feature_memory_budget is not None:
        return feature_memory_budget
    available = available_memory()
    return None if available is None else available // 2


def device_budget(device: torch.device | str) -> int | None:
    """Bytes stored features may take on ``device``: half of a CUDA device's free memory (the
    rest is left to sampling, whose batch is twice inversion's), counting as free what PyTorch's
    allocator holds unused (the VAE's encoding just gave it back); None for a CPU or a device
    whose free memory cannot be read (features then live on the host)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    try:
        free, _ = torch.cuda.mem_get_info(device)
        held = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    except RuntimeError:
        return None
    return (free + held) // 2


def feature_placement(estimate: int, on_device: int | None, on_host: int | None, mode: str) -> str:
    """Where a store of ``estimate`` bytes lives: ``"device"`` when it fits ``on_device`` (the
    accelerator's budget, None: none), else ``"host"``, except that ``mode="auto"`` gives
    ``"recompute"`` when it does not fit ``on_host`` either (None: no limit)."""
    if on_device is not None and estimate <= on_device:
        return "device"
    if mode == "auto" and on_host is not None and estimate > on_host:
        return "recompute"
    return "host"


def store_estimate(first_step_bytes: int, steps: int) -> int:
    """Bytes the whole store will take, from the first injected step's: every injected step
    records the same layers at the same shapes (all windows of a long clip included)."""
    return first_step_bytes * steps


class FeatureStore:
    """Records source features per key and hands them back, for every injection point.

    A key is a timestep, or (timestep, window) when a long clip runs in windows.

    Processors and hooks call :meth:`process` with a layer's fresh output; what they get back
    depends on the store's state:

    - idle (the default): the output itself;
    - ``capturing(t)``: the output itself, and a copy is kept under (t, name);
    - ``injecting(t)``: the copy kept at t, repeated for every video of the batch;
    - ``sharing(rows)``: the first ``rows`` rows of the output (the source video's, computed in
      the same call) repeated for every video of the batch.

    Args:
        storage_dtype: dtype the recorded features are kept in.
        storage_device: where they are kept (default: the CPU, off the accelerator).
    """

    def __init__(self, storage_dtype: torch.dtype = torch.float16, storage_device: torch.device | str = "cpu"):
        self.storage_dtype = storage_dtype
        self.storage_device = torch.device(storage_device)
        self.features: dict[Hashable, dict[str, torch.Tensor]] = {}
        self._capture_at: Hashable | None = None
        self._inject_at: Hashable | None = None
        self._share_rows: int | None = None

    @contextmanager
    def capturing(self, key: Hashable):
        self._capture_at = key
        self.features.setdefault(self._capture_at, {})
        try:
            yield self
        finally:
            self._capture_at = None

    @contextmanager
    def injecting(self, key: Hashable):
        if key not in self.features:
            raise KeyError(f"no features were recorded at {key}")
        self._inject_at = key
        try:
            yield self
        finally:
            self._inject_at = None

    @contextmanager
    def sharing(self, rows: int):
        self._share_rows = rows
        try:
            yield self
        finally:
            self._share_rows = None

    def process(self, name: str, output: torch.Tensor) -> torch.Tensor:
        """A layer's output (B*F, ...) -> the tensor the layer should go on with."""
        if self._capture_at is not None:
            stored = output.detach().to(self.storage_device, self.storage_dtype, copy=True)
            self.features[self._capture_at][name] = stored
            return output
        if self._inject_at is not None:
            source = self.features[self._inject_at][name].to(output.device, output.dtype)
        elif self._share_rows is not None:
            source = output[: self._share_rows]
        else:
            return output
        return source.repeat(output.shape[0] // source.shape[0], *([1] * (source.ndim - 1)))

    def move_to(self, device: torch.device | str) -> None:
        """Keep what is recorded, and what will be, on ``device``."""
        self.storage_device = torch.device(device)
        for step in self.features.values():
            for name, tensor in step.items():
                step[name] = tensor.to(self.storage_device, self.storage_dtype)

    @property
    def nbytes(self) -> int:
        """Bytes held by the recorded features."""
        return sum(t.numel() * t.element_size() for step in self.features.values() for t in step.values())
