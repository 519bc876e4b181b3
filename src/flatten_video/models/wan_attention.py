"""FLATTEN's self-attention processor for diffusers' ``WanAttention`` (a video diffusion
transformer, docs/architecture.md, "Backbones: Wan").

Wan's tokens are already spatio-temporal, (B, F' * h' * w', D) frame-major, so its own
self-attention is dense spatio-temporal attention. The processor computes it exactly as diffusers'
``WanAttnProcessor`` does (projections, ``norm_q`` / ``norm_k`` over all heads, heads, the rotary
embedding on q and k, ``dispatch_attention_fn``), then, where the context has trajectories for
this token grid, flow-guided attention on the dense output H (query = key = value = H per head,
no rotary embedding: combination II), then ``to_out``.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn

from ..ops import flow_guided_attention
from .context import FlattenContext


def apply_rotary_emb(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on (B, N, heads, d), pairs of channels rotated."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = freqs_cos[..., 0::2], freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class FlattenWanAttnProcessor:
    """Self-attention of a ``WanTransformerBlock`` (``attn1``): Wan's dense attention, then
    flow-guided attention along the trajectories of the token grid.

    Args:
        context: the pipeline's :class:`FlattenContext`, read at every call.
        name: the module's name in the transformer, which names its features in the store.
        injects: whether its query and key go through the feature store.
        flow_guided: whether this block runs flow-guided attention (a config choice per block).
    """

    def __init__(self, context: FlattenContext, name: str, injects: bool = False, flow_guided: bool = True):
        self.context = context
        self.name = name
        self.injects = injects
        self.flow_guided = flow_guided

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if encoder_hidden_states is not None or attn.add_k_proj is not None:
            raise ValueError("FlattenWanAttnProcessor handles Wan's self-attention (attn1) only")
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query, key = attn.norm_q(query), attn.norm_k(key)
        store = self.context.features
        if self.injects and store is not None:
            query = store.process(self.name + ".to_q", query)
            key = store.process(self.name + ".to_k", key)
        query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))
        if rotary_emb is not None:
            query, key = apply_rotary_emb(query, *rotary_emb), apply_rotary_emb(key, *rotary_emb)
        hidden = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                       backend=self.context.attention_backend)
        hidden = hidden.flatten(2, 3).type_as(query)
        if self.flow_guided:
            trajectories = self.context.trajectories_for(hidden.shape[1] // self.context.num_latent_frames)
            if trajectories is not None:
                hidden = flow_guided_attention(hidden, trajectories, attn.heads)
        return attn.to_out[1](attn.to_out[0](hidden))
