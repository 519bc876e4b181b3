"""U-Net inflation without new weights (DESIGN.md 1.4).

Frames are folded into the batch, ``(B*F, C, h, w)`` video-major, so the image U-Net runs as it
is. Three things change, all installed by :func:`install_flatten` without forking diffusers:

- every ``attn1`` gets a :class:`FlattenAttnProcessor`: dense spatio-temporal attention (DSTA)
  over all frames, then flow-guided attention on its output before ``to_out``;
- the GroupNorms of the ResNet blocks and ``conv_norm_out`` become :class:`VideoGroupNorm`,
  taking statistics over a whole video as the paper's 5-D code does;
- the injection ResNets' ``conv2`` outputs pass through the feature store.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.resnet import ResnetBlock2D

from .context import FlattenContext
from .features import ATTENTION_POINTS, attach_resnet_hooks
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
        count, length = group.shape
        index = group.reshape(-1)

        def gather(x: torch.Tensor) -> torch.Tensor:
            return x[:, index].view(batch, count, length, heads, head_dim).transpose(2, 3)

        attended = F.scaled_dot_product_attention(gather(query), gather(key), gather(hidden))
        out[:, index] = attended.transpose(2, 3).reshape(batch, count * length, channels)
    return out


def multihead_attention(query, key, value, heads: int, frames: int = 1) -> torch.Tensor:
    """Softmax attention over groups of ``frames`` consecutive batch rows.

    Args:
        query, key, value: (B*frames, n, C).
        frames: 1 attends within each frame; F attends across all frames of each video (DSTA).

    Returns:
        (B*frames, n, C).
    """
    rows, tokens, channels = query.shape
    head_dim = channels // heads

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(rows // frames, -1, heads, head_dim).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(query), split(key), split(value))
    return out.transpose(1, 2).reshape(rows, tokens, channels)


class FlattenAttnProcessor:
    """Self-attention processor for ``attn1``: DSTA and flow-guided attention.

    Args:
        context: the pipeline's :class:`FlattenContext`, read at every call.
        name: the attention module's name in the U-Net; its query and key go through the
            feature store when the name is an injection point.
    """

    def __init__(self, context: FlattenContext, name: str):
        self.context = context
        self.name = name
        self.injects = name in ATTENTION_POINTS

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

        frames = context.num_frames if context.dense_temporal else 1
        hidden = multihead_attention(query, key, value, attn.heads, frames)

        trajectories = context.trajectories_for(hidden.shape[1])
        if trajectories is not None:
            hidden = self._flow_guided(attn, hidden, query, key, trajectories)

        hidden = attn.to_out[1](attn.to_out[0](hidden))
        if attn.residual_connection:
            hidden = hidden + residual
        return hidden / attn.rescale_output_factor

    def _flow_guided(self, attn, hidden, query, key, trajectories) -> torch.Tensor:
        rows, tokens, channels = hidden.shape
        videos = rows // self.context.num_frames

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
        frames = self.context.num_frames
        if frames == 1:
            return super().forward(x)
        rows, channels = x.shape[:2]
        video = x.reshape(rows // frames, frames, *x.shape[1:]).transpose(1, 2)
        out = F.group_norm(video, self.num_groups, self.weight, self.bias, self.eps)
        return out.transpose(1, 2).reshape(x.shape)


def _wrap_norm(parent: torch.nn.Module, attribute: str, context: FlattenContext) -> None:
    norm = getattr(parent, attribute, None)
    if isinstance(norm, torch.nn.GroupNorm) and not isinstance(norm, VideoGroupNorm):
        setattr(parent, attribute, VideoGroupNorm(norm, context))


def install_flatten(unet: torch.nn.Module, context: FlattenContext) -> None:
    """Turn a diffusers ``UNet2DConditionModel`` into FLATTEN's inflated video U-Net, in place.

    ``attn1`` layers get :class:`FlattenAttnProcessor`, every other attention the stock
    processor; ResNet norms and ``conv_norm_out`` become :class:`VideoGroupNorm`; the injection
    ResNets' ``conv2`` outputs are routed through ``context.features``. Installing twice is
    harmless for the norms; processors and hooks are replaced.
    """
    processors = {}
    for name in unet.attn_processors:
        module_name = name.removesuffix(".processor")
        if module_name.endswith("attn1"):
            processors[name] = FlattenAttnProcessor(context, module_name)
        else:
            processors[name] = AttnProcessor2_0()
    unet.set_attn_processor(processors)

    for module in unet.modules():
        if isinstance(module, ResnetBlock2D):
            _wrap_norm(module, "norm1", context)
            _wrap_norm(module, "norm2", context)
    _wrap_norm(unet, "conv_norm_out", context)

    for handle in getattr(unet, "_flatten_hooks", []):
        handle.remove()
    unet._flatten_hooks = attach_resnet_hooks(unet, context)
