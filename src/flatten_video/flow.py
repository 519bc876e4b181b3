"""Optical flow between consecutive frames.

Two estimators share one entry point, :func:`estimate_flow`:

- ``"raft"``: torchvision's RAFT-large with its pretrained weights (the paper's choice).
- ``"dis"``: OpenCV's DIS optical flow, classical and weight-free, for offline use.

Flows are forward flows in pixels at the frames' size: ``flows[t]`` maps frame ``t`` to
frame ``t + 1``; channel 0 is the x (column) displacement, channel 1 the y (row) one.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .choices import FLOW_METHODS
from .validation import check_choice
_RAFT_MIN_SIZE = 128


class FlowWeightsUnavailable(RuntimeError):
    """RAFT's pretrained weights are neither cached nor downloadable."""


def _check_frames(frames: torch.Tensor) -> None:
    if not isinstance(frames, torch.Tensor) or not frames.is_floating_point():
        raise ValueError("frames must be a float tensor (F, 3, H, W) with values in [0, 1]")
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must have shape (F, 3, H, W), got {tuple(frames.shape)}")
    if frames.shape[0] < 2:
        raise ValueError(f"optical flow needs at least 2 frames, got {frames.shape[0]}")
    if not torch.isfinite(frames).all():
        raise ValueError("frames contain NaN or infinite values")


def estimate_flow(
    frames: torch.Tensor,
    method: str = "raft",
    *,
    device: torch.device | str | None = None,
    chunk_size: int = 8,
    raft_model: torch.nn.Module | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Forward optical flow between consecutive frames.

    Args:
        frames: (F, 3, H, W) float tensor in [0, 1].
        method: ``"raft"`` or ``"dis"``.
        device: where RAFT runs (default: the frames' device). DIS always runs on the CPU.
        chunk_size: frame pairs per RAFT forward pass.
        raft_model: a ready RAFT module (for example built with random weights in tests);
            default: torchvision's RAFT-large with its pretrained weights.
        progress: show a progress bar.

    Returns:
        (F-1, 2, H, W) float32 tensor on the frames' device, in pixels.
    """
    check_choice("flow method", method, FLOW_METHODS)
    _check_frames(frames)
    if method == "raft":
        flows = _raft_flow(frames, device=device, chunk_size=chunk_size, model=raft_model, progress=progress)
    else:
        flows = _dis_flow(frames, progress=progress)
    return flows.to(frames.device)


def load_raft(device: torch.device | str = "cpu") -> torch.nn.Module:
    """torchvision's RAFT-large with pretrained weights, from the torch hub cache or downloaded."""
    from torchvision.models.optical_flow import raft_large

    model = raft_large(weights=None, progress=False)
    model.load_state_dict(ensure_raft_weights())
    return model.eval().to(device)


def ensure_raft_weights() -> dict[str, torch.Tensor]:
    """RAFT-large's pretrained state dict, from the torch hub cache or downloaded into it.

    Call it before long work to fail early: without cached weights and without network it raises
    :class:`FlowWeightsUnavailable`, whose one-line message names the weight-free ``dis``
    estimator and where to put the weights file by hand.
    """
    from torchvision.models.optical_flow import Raft_Large_Weights

    weights = Raft_Large_Weights.DEFAULT
    try:
        # weights_only: the file is a plain state dict, so nothing in it gets unpickled as code.
        # torch.hub announces a download even without progress: offline, that line would stand
        # before our one-line error (and on stdout, among the command's results).
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except Exception as error:  # torchvision raises URLError, OSError, RuntimeError... offline
        cache = torch.hub.get_dir()
        filename = weights.url.rsplit("/", 1)[-1]
        raise FlowWeightsUnavailable(
            f"RAFT weights could not be loaded ({error.__class__.__name__}: {error}). "
            f"Either use the weight-free estimator (method='dis', CLI: --flow dis), or download "
            f"{weights.url} by hand and place it at {cache}/checkpoints/{filename}."
        ) from error


def _pad_to_multiple(x: torch.Tensor, multiple: int, minimum: int = 0) -> tuple[torch.Tensor, tuple[int, int]]:
    height, width = x.shape[-2:]
    pad_h = max(minimum - height, (-height) % multiple)
    pad_w = max(minimum - width, (-width) % multiple)
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return x, (height, width)


@torch.no_grad()
def _raft_flow(frames, *, device, chunk_size, model, progress) -> torch.Tensor:
    device = torch.device(device) if device is not None else frames.device
    model = load_raft(device) if model is None else model.eval().to(device)
    # RAFT expects [-1, 1] inputs whose sides are multiples of 8, and at least 128 px: its 4-level
    # correlation pyramid halves the 1/8-size feature maps three times.
    images, (height, width) = _pad_to_multiple(frames.float() * 2 - 1, 8, minimum=_RAFT_MIN_SIZE)
    pairs = frames.shape[0] - 1
    flows = []
    for start in tqdm(range(0, pairs, chunk_size), desc="Optical flow (RAFT)", disable=not progress):
        stop = min(start + chunk_size, pairs)
        first = images[start:stop].to(device)
        second = images[start + 1 : stop + 1].to(device)
        flows.append(model(first, second)[-1][..., :height, :width].float().cpu())
    return torch.cat(flows)


def _dis_flow(frames, *, progress) -> torch.Tensor:
    import cv2

    gray = (frames.float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    gray = (0.299 * gray[:, 0] + 0.587 * gray[:, 1] + 0.114 * gray[:, 2]).round().to(torch.uint8).numpy()
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    flows = []
    for t in tqdm(range(len(gray) - 1), desc="Optical flow (DIS)", disable=not progress):
        flow = dis.calc(np.ascontiguousarray(gray[t]), np.ascontiguousarray(gray[t + 1]), None)
        flows.append(torch.from_numpy(flow).permute(2, 0, 1))
    return torch.stack(flows).float()
