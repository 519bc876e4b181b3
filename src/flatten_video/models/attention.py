"""The modules FLATTEN swaps into a stock U-Net (docs/architecture.md, The method, step 4): the self-attention processor
and the video-wide GroupNorm. :mod:`flatten_video.models.install` puts them in and takes them out.

Frames are folded into the batch, ``(B*F, C, h, w)`` video-major, so the image U-Net runs as it is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from ..ops import flow_guided_attention, multihead_attention
from .context import FlattenContext


class FlattenAttnProcessor:
    """Self-attention processor for ``attn1``: DSTA and flow-guided attention.

    Args:
        context: the pipeline's :class:`FlattenContext`, read at every call.
        name: the attention module's name in the U-Net, which names its features in the store.
        injects: whether its query and key go through the feature store (an injection point).
    """

    def __init__(self, context: FlattenContext, name: str, injects: bool = False):
        self.context = context
        self.name = name
        self.injects = injects

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        if hidden_states.ndim != 3 or encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("FlattenAttnProcessor handles self-attention on (B*F, tokens, C) without a mask")
        context = self.context
        residual = hidden_states
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        store = context.features
        if self.injects and store is not None:
            query = store.process(self.name + ".to_q", query)
            key = store.process(self.name + ".to_k", key)

        frames = context.num_latent_frames if context.dense_temporal else 1
        hidden = multihead_attention(query, key, value, attn.heads, frames, self.context.attention_backend)

        trajectories = context.trajectories_for(hidden.shape[1])
        if trajectories is not None:
            hidden = self._flow_guided(attn, hidden, query, key, trajectories)

        hidden = attn.to_out[1](attn.to_out[0](hidden))
        if attn.residual_connection:
            hidden = hidden + residual
        return hidden / attn.rescale_output_factor

    def _flow_guided(self, attn, hidden, query, key, trajectories) -> torch.Tensor:
        rows, tokens, channels = hidden.shape
        videos = rows // self.context.num_latent_frames

        def as_video(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(videos, -1, channels)

        variant = self.context.variant
        if variant == "II":
            out = flow_guided_attention(as_video(hidden), trajectories, attn.heads)
        elif variant == "I":
            out = flow_guided_attention(
                as_video(attn.to_v(hidden)),
                trajectories,
                attn.heads,
                query=as_video(attn.to_q(hidden)),
                key=as_video(attn.to_k(hidden)),
            )
        else:  # "source-qk"
            out = flow_guided_attention(
                as_video(hidden), trajectories, attn.heads, query=as_video(query), key=as_video(key)
            )
        return out.reshape(rows, tokens, channels)


class VideoGroupNorm(torch.nn.GroupNorm):
    """GroupNorm whose statistics span all frames of a video.

    Takes (B*F, C, h, w) video-major input and normalises it as the (B, C, F, h, w) tensor the
    paper's code works on. Shares its weight and bias with the GroupNorm it replaces, so the
    U-Net's state dict is unchanged.
    """

    def __init__(self, norm: torch.nn.GroupNorm, context: FlattenContext):
        super().__init__(norm.num_groups, norm.num_channels, norm.eps, norm.affine, device="meta")
        self.weight, self.bias = norm.weight, norm.bias
        self.context = context

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = self.context.num_latent_frames
        if frames == 1:
            return super().forward(x)
        rows, channels = x.shape[:2]
        video = x.reshape(rows // frames, frames, *x.shape[1:]).transpose(1, 2)
        out = F.group_norm(video, self.num_groups, self.weight, self.bias, self.eps)
        return out.transpose(1, 2).reshape(x.shape)
