"""One denoising evaluation of a clip, whole or in co-denoising windows (docs/architecture.md, Long clips).

:func:`plan_runs` turns a :class:`~flatten_video.models.FlattenConfig`'s window settings into
windows ready for the U-Net (their frames, weights and clip-wide trajectories seen from their
frames); :func:`denoise` runs the FLATTEN U-Net on each and mixes the predictions. A clip no
longer than the window is one run over the whole clip: the exact method.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Callable

import torch

from ..models.context import FlattenConfig, FlattenContext
from ..trajectories import Trajectories
from ..windows import plan_windows
from .conditioning import Conditioning


@dataclass
class WindowRun:
    """A window ready to run.

    Attributes:
        index: its place in the plan.
        frames: (W,) the clip's latent frames whose noise it predicts.
        inputs: (W + A,) the latent frames it feeds the model: its own, then anchors.
        weights: (1, 1, W, 1, 1) its share of each of its frames' noise.
        trajectories: the clip-wide trajectories as its batch sees them (grid -> Trajectories).
        whole: whether it is the whole clip (the exact method).
    """

    index: int
    frames: torch.Tensor
    inputs: torch.Tensor
    weights: torch.Tensor
    trajectories: dict[tuple[int, int], Trajectories]
    whole: bool

    def key(self, timestep: int):
        """Where this window's features are kept in a store: the timestep, and the window when
        the clip has several."""
        return timestep if self.whole else (timestep, self.index)


def plan_runs(
    config: FlattenConfig, num_latent_frames: int, trajectories: dict[tuple[int, int], Trajectories], device
) -> list[WindowRun]:
    """The windows of a clip of ``num_latent_frames`` latent frames under ``config``, on ``device``."""
    windows = plan_windows(num_latent_frames, config.window, config.overlap, config.anchors)
    whole = len(windows) == 1
    return [
        WindowRun(
            index=k,
            frames=window.frames.to(device),
            inputs=window.inputs.to(device),
            weights=window.weights.view(1, 1, -1, 1, 1).to(device),
            trajectories={grid: (t if whole else t.select(window.inputs)).to(device) for grid, t in trajectories.items()},
            whole=whole,
        )
        for k, window in enumerate(windows)
    ]


def process_share(runs: list[WindowRun]) -> tuple[list[WindowRun], Callable[[torch.Tensor], None] | None]:
    """The windows this process runs, and how to sum the predictions of all processes.

    Under ``torch.distributed`` window k goes to process k mod N and the predictions are summed
    across processes before the step; alone, every window is this process's.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return runs, None
    rank, size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if size == 1:
        return runs, None
    if runs[0].whole:
        return runs, None  # one window: every process computes it alike
    if size > len(runs):
        raise ValueError(f"{size} processes but only {len(runs)} window(s) per step: use at most {len(runs)} processes")
    return runs[rank::size], lambda tensor: torch.distributed.all_reduce(tensor)


def denoise(
    predict: Callable[[torch.Tensor, int, Conditioning], torch.Tensor],
    context: FlattenContext,
    runs: list[WindowRun],
    latents: torch.Tensor,
    timestep: int,
    conditioning: Conditioning,
    scope: Callable[[WindowRun, int], AbstractContextManager],
    on_window: Callable[[], None] = lambda: None,
) -> torch.Tensor:
    """The noise of a batch of clips, (B, C, F, h, w) -> (B, C, F, h, w).

    Each window's frames and anchors go through ``predict`` (the U-Net seam) with the context set
    to them; a frame's noise is the weighted sum of its windows' predictions. ``scope(run, rows)``
    gives the feature store's state for a window whose batch has ``rows`` frames per video.
    """
    mine, reduce = process_share(runs)
    if runs[0].whole:  # the exact method: the clip is its own window, nothing to cut or mix
        run = runs[0]
        context.num_latent_frames, context.trajectories, context.window_frames = latents.shape[2], run.trajectories, None
        with scope(run, latents.shape[2]):
            noise = predict(latents, timestep, conditioning)
        on_window()
        return noise
    noise = torch.zeros_like(latents)
    for run in mine:
        rows = len(run.inputs)
        context.num_latent_frames, context.trajectories, context.window_frames = rows, run.trajectories, run.inputs
        with scope(run, rows):
            window = predict(latents.index_select(2, run.inputs), timestep, conditioning)
        noise.index_add_(2, run.frames, window[:, :, : len(run.frames)] * run.weights.to(window.dtype))
        on_window()
    if reduce is not None:
        reduce(noise)
    return noise


def idle(run: WindowRun, frames: int) -> AbstractContextManager:
    """The feature store's state that records and injects nothing."""
    return nullcontext()


@dataclass
class Denoising:
    """The model evaluations of one loop (an inversion, a sampling) with FLATTEN on: made by
    :meth:`~flatten_video.pipelines.mixin.FlattenMixin.denoising`, called once per evaluation.

    Attributes:
        predict: the model seam, (B, C, F', h, w), timestep, conditioning -> prediction.
        context: the :class:`FlattenContext` the processors read (its feature store included).
        runs: the windows of the clip (:func:`plan_runs`).
        on_window: called after each window's evaluation (the progress bar).
    """

    predict: Callable[[torch.Tensor, int, Conditioning], torch.Tensor]
    context: FlattenContext
    runs: list[WindowRun]
    on_window: Callable[[], None]

    def __call__(self, batch: torch.Tensor, timestep, conditioning: Conditioning,
                 scope: Callable[[WindowRun, int], AbstractContextManager] = idle) -> torch.Tensor:
        """The prediction for every row of ``batch`` (rows, C, F', h, w) at ``timestep``, the whole
        clip or its windows mixed (:func:`denoise`); ``scope(run, frames)`` sets the store's state."""
        return denoise(self.predict, self.context, self.runs, batch, timestep, conditioning, scope, self.on_window)
