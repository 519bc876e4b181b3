"""FLATTEN inside Wan's video transformer: the processor against diffusers' stock one and against
a per-trajectory loop, the token grid, and installing for a call only (tiny random Wan: patch
(1, 2, 2), 2 heads x 12, 2 layers)."""

from __future__ import annotations

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from flatten_video.backbones import WanBackbone, backbone_for
from flatten_video.models.context import FlattenConfig, FlattenContext
from flatten_video.models.wan_attention import FlattenWanAttnProcessor
from flatten_video.trajectories import Trajectories

from test_trajectories import random_flows
from flatten_video.trajectories import sample_trajectories


@pytest.fixture(scope="module")
def wan():
    torch.manual_seed(0)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    ).eval()


def inputs(frames=3, h=8, w=12, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 16, frames, h, w, generator=generator), torch.tensor([500.0]),
            torch.randn(1, 6, 32, generator=generator))


def forward(wan, latents, t, text):
    return wan(hidden_states=latents, timestep=t, encoder_hidden_states=text, return_dict=False)[0]


def trajectories_for(frames, grid, seed=0):
    flows = random_flows(frames=frames, height=grid[0] * 4, width=grid[1] * 4, scale=6.0, seed=seed)
    return sample_trajectories(flows, grid, torch.Generator().manual_seed(seed))


def test_the_backbone_is_found_by_the_model_class_and_knows_wans_grid(wan):
    backbone = backbone_for(wan, 8)
    assert isinstance(backbone, WanBackbone) and backbone.temporal_factor == 4 and backbone.side_multiple == 16
    assert backbone.num_latent_frames(81) == 21 and backbone.token_grids((60, 104), (0,)) == [(30, 52)]
    # Self-attention by meaning: every block's attn1, never the cross-attention attn2.
    assert [name for name, _ in backbone.self_attentions()] == ["blocks.0.attn1", "blocks.1.attn1"]


def test_with_flatten_off_the_processor_computes_what_the_stock_one_does(wan):
    latents, t, text = inputs()
    stock = forward(wan, latents, t, text)
    with backbone_for(wan, 8).installed(FlattenContext(num_latent_frames=3, attention_mode="dsta")):
        ours = forward(wan, latents, t, text)
    assert torch.equal(ours, stock)


def reference_flow_guided(hidden: torch.Tensor, labels: torch.Tensor, heads: int) -> torch.Tensor:
    """Every token attends to its trajectory's tokens, one trajectory and one head at a time."""
    out = hidden.clone()
    flat = labels.reshape(-1)
    d = hidden.shape[-1] // heads
    for trajectory in flat.unique():
        index = (flat == trajectory).nonzero().squeeze(1)
        for head in range(heads):
            x = hidden[:, index, head * d:(head + 1) * d]
            weights = torch.softmax(x @ x.transpose(1, 2) / d ** 0.5, dim=-1)
            out[:, index, head * d:(head + 1) * d] = weights @ x
    return out


def test_flow_guided_attention_on_wan_tokens_matches_a_per_trajectory_loop(wan):
    """One block's attn1: Wan's dense output H (the stock processor with to_out taken off), then
    the loop over trajectories at the token grid, then to_out."""
    attn = wan.blocks[0].attn1
    latents, t, text = inputs()
    tokens = torch.randn(1, 3 * 4 * 6, 24, generator=torch.Generator().manual_seed(2))
    rotary = wan.rope(latents)
    trajectories = trajectories_for(3, (4, 6))
    context = FlattenContext(num_latent_frames=3, trajectories={(4, 6): trajectories})
    ours = FlattenWanAttnProcessor(context, "blocks.0.attn1")(attn, tokens, rotary_emb=rotary)

    to_out = attn.to_out
    attn.to_out = torch.nn.ModuleList([torch.nn.Identity(), torch.nn.Identity()])
    try:
        dense = WanAttnProcessor()(attn, tokens, rotary_emb=rotary)
    finally:
        attn.to_out = to_out
    expected = to_out[1](to_out[0](reference_flow_guided(dense, trajectories.labels, attn.heads)))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    assert trajectories.groups and (ours - to_out[1](to_out[0](dense))).abs().max() > 1e-4  # it changed something


def test_flatten_runs_in_the_configured_blocks_only(wan):
    latents, t, text = inputs()
    trajectories = {(4, 6): trajectories_for(3, (4, 6))}
    backbone = backbone_for(wan, 8)

    def run(blocks):
        context = FlattenContext.from_config(FlattenConfig(blocks=blocks), 3, trajectories)
        with backbone.installed(context):
            return forward(wan, latents, t, text)

    stock, every, first, second = forward(wan, latents, t, text), run(None), run((0,)), run((1,))
    assert all((x - stock).abs().max() > 1e-5 for x in (every, first, second))
    assert (first - second).abs().max() > 1e-5 and (first - every).abs().max() > 1e-5


def test_stock_processors_after_every_call_also_on_error(wan):
    before = [module.processor for _, module in backbone_for(wan, 8).self_attentions()]
    cross = wan.blocks[0].attn2.processor
    backbone = backbone_for(wan, 8)
    with pytest.raises(RuntimeError, match="boom"):
        with backbone.installed(FlattenContext(num_latent_frames=3)):
            assert isinstance(wan.blocks[0].attn1.processor, FlattenWanAttnProcessor)
            assert wan.blocks[0].attn2.processor is cross  # cross-attention untouched
            raise RuntimeError("boom")
    assert [module.processor for _, module in backbone.self_attentions()] == before
