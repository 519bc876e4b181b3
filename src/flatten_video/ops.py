"""Attention as pure tensor functions: the dense attention FLATTEN follows and the flow-guided
attention it adds (docs/architecture.md, The method, step 4). No module state; the processors in
:mod:`flatten_video.models.attention` call these."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .trajectories import Trajectories


def flow_guided_attention(
    hidden: torch.Tensor,
    trajectories: Trajectories,
    heads: int,
    *,
    query: torch.Tensor | None = None,
    key: torch.Tensor | None = None,
) -> torch.Tensor:
    """Every token attends to the tokens of its own trajectory (itself included).

    Args:
        hidden: (B, F*h*w, C) values, frame-major tokens; B videos share ``trajectories``.
        trajectories: the trajectories of the (F, h, w) grid.
        heads: attention heads; C must be divisible by it. Scale is 1/sqrt(C/heads).
        query, key: (B, F*h*w, C); default ``hidden`` (the paper's combination II).

    Returns:
        (B, F*h*w, C). Cost is linear in the number of tokens: tokens are gathered per
        trajectory length, so no (F*h*w)^2 matrix is ever built.
    """
    batch, tokens, channels = hidden.shape
    if tokens != trajectories.labels.numel():
        raise ValueError(f"hidden has {tokens} tokens but the trajectories cover {trajectories.labels.numel()}")
    query = hidden if query is None else query
    key = hidden if key is None else key
    head_dim = channels // heads
    # A token alone on its trajectory attends only to itself: its output is its value.
    out = hidden.clone()
    for group in trajectories.groups:
        length = group.shape[1]
        # Fused SDPA kernels take 4-D inputs with at most 65535 rows (batch x trajectories) in a
        # launch; a 5-D input, or more rows, silently falls back to the slow math kernel or fails.
        for part in group.split(max(1, MAX_SDPA_ROWS // batch)):
            count = part.shape[0]
            index = part.reshape(-1)

            def gather(x: torch.Tensor) -> torch.Tensor:
                return x[:, index].reshape(batch * count, length, heads, head_dim).transpose(1, 2)

            attended = F.scaled_dot_product_attention(gather(query), gather(key), gather(hidden))
            out[:, index] = attended.transpose(1, 2).reshape(batch, count * length, channels)
    return out


#: Rows (videos x trajectories) of one fused attention launch: CUDA grids hold 65535 blocks a side.
MAX_SDPA_ROWS = 65535


def multihead_attention(query, key, value, heads: int, frames: int = 1, backend: str | None = None) -> torch.Tensor:
    """Softmax attention over groups of ``frames`` consecutive batch rows, through diffusers'
    attention dispatcher (``backend``: one of its names; None: its active one, PyTorch's SDPA).

    Args:
        query, key, value: (B*frames, n, C).
        frames: 1 attends within each frame; F attends across all frames of each video (DSTA).

    Returns:
        (B*frames, n, C).
    """
    rows, tokens, channels = query.shape
    head_dim = channels // heads

    def split(x: torch.Tensor) -> torch.Tensor:  # (B, frames * n, heads, d), the dispatcher's layout
        return x.reshape(rows // frames, -1, heads, head_dim)

    from diffusers.models.attention_dispatch import dispatch_attention_fn

    out = dispatch_attention_fn(split(query), split(key), split(value), backend=backend)
    return out.reshape(rows, tokens, channels)
