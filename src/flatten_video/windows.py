"""Temporal co-denoising windows for long clips (docs/architecture.md, Long clips): which frames each window holds,
which anchor frames join it, and how much each window's prediction counts for each frame.

Windows of W frames overlap by O (the last one ends at the clip's end); inside an overlap the
weights fall off linearly towards the window's edge, and each frame's weights sum to 1 over the
windows holding it. Anchor frames, spread evenly over the clip, are appended to every window that
does not already hold them; their predictions are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .validation import check_anchor_count, check_windows  # noqa: F401 - check_windows: the rule of a window setting


@dataclass(frozen=True)
class Window:
    """One window of a plan.

    Attributes:
        frames: (W,) the clip frames it denoises, in order.
        anchors: (A',) the anchor frames appended to it (those it does not hold).
        weights: (W,) float64, the share of its prediction in each of its frames' noise.
    """

    frames: torch.Tensor
    anchors: torch.Tensor
    weights: torch.Tensor

    @property
    def inputs(self) -> torch.Tensor:
        """(W + A',) the frames fed to the U-Net: its own, then the anchors."""
        return torch.cat([self.frames, self.anchors])


def anchor_frames(num_frames: int, anchors: int) -> torch.Tensor:
    """(A,) ``anchors`` frames spread evenly over the clip, first and last included (A >= 2)."""
    if anchors == 0:
        return torch.zeros(0, dtype=torch.long)
    check_anchor_count(num_frames, anchors)
    if anchors == 1:
        return torch.tensor([num_frames // 2])
    return torch.linspace(0, num_frames - 1, anchors, dtype=torch.float64).round().long()


def plan_windows(num_frames: int, window: int, overlap: int, anchors: int) -> list[Window]:
    """The windows covering ``num_frames`` frames.

    Args:
        window: W, frames per window; 0 (or W >= F) gives one window over the whole clip, with no
            anchors: the exact method.
        overlap: O, frames shared by consecutive windows (0 <= O < W).
        anchors: A, anchor frames appended to every window.

    Returns:
        Windows in clip order; window k starts at k * (W - O), the last at F - W.
    """
    check_windows(window, overlap, anchors)
    if window == 0 or window >= num_frames:
        return [Window(torch.arange(num_frames), torch.zeros(0, dtype=torch.long), torch.ones(num_frames, dtype=torch.float64))]
    stride = window - overlap
    starts = list(range(0, num_frames - window, stride)) + [num_frames - window]
    ramp = torch.arange(1, window + 1, dtype=torch.float64) / (overlap + 1)
    raw = []
    for k, start in enumerate(starts):
        weight = torch.ones(window, dtype=torch.float64)
        if k > 0:  # rises from the window's first frame across the overlap with the previous one
            weight = torch.minimum(weight, ramp)
        if k < len(starts) - 1:  # and falls towards its last frame
            weight = torch.minimum(weight, ramp.flip(0))
        raw.append(weight)
    total = torch.zeros(num_frames, dtype=torch.float64)
    for start, weight in zip(starts, raw):
        total[start : start + window] += weight
    clip_anchors = anchor_frames(num_frames, anchors)
    plan = []
    for start, weight in zip(starts, raw):
        frames = torch.arange(start, start + window)
        extra = clip_anchors[(clip_anchors < start) | (clip_anchors >= start + window)]
        plan.append(Window(frames, extra, weight / total[frames]))
    return plan
