"""FLATTEN inside Wan's video transformer: the processor against diffusers' stock one and against
a per-trajectory loop, the token grid, and installing for a call only (tiny random Wan: patch
(1, 2, 2), 2 heads x 12, 2 layers)."""

from __future__ import annotations

import pathlib

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


# ----------------------------------------------------------------------------- the Wan pipeline


def save_tiny_wan(folder, transformer):
    """A tiny Wan 2.1 checkpoint in diffusers layout: the transformer above, the tiny Wan VAE, a
    tiny UMT5 with a tokenizer written here, and Wan's UniPC flow scheduler config."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    from flatten_video.pipelines.pipeline_flatten_wan import FlattenWanPipeline

    words = ["<pad>", "</s>", "<unk>", "a", "cat", "dog", "tiger", "walking", "in", "the", "snow", "high", "quality"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                        model_max_length=512)
    torch.manual_seed(3)
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(words), d_model=32, d_kv=8, d_ff=32, num_layers=1,
                                               num_heads=4, relative_attention_num_buckets=8)).eval()
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True]).eval()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = FlattenWanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                              scheduler=scheduler)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def wan_pipe(wan, tmp_path_factory):
    from flatten_video.pipelines.pipeline_flatten_wan import FlattenWanPipeline

    folder = save_tiny_wan(tmp_path_factory.mktemp("models") / "tiny-wan", wan)
    pipe = FlattenWanPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def clip9():
    from conftest import moving_texture

    return moving_texture(frames=9, height=64, width=64, shift=4)


FAST = dict(num_inference_steps=4, n_max=3, flow_method="dis", output_type="latent")


@pytest.mark.parametrize("attention_mode", ["dsta", "dsta+flatten"])
@pytest.mark.parametrize("steps", [1, 4])
def test_flowedit_with_the_source_prompt_returns_the_source_exactly(wan_pipe, attention_mode, steps):
    frames = clip9()
    start = wan_pipe.invert_video(frames, num_inference_steps=steps, flow_method="dis", attention_mode=attention_mode,
                                  source_prompt="a cat", generator=torch.Generator().manual_seed(0))
    out = wan_pipe(inversion=start, prompt="a cat", guidance_scale=4.0, source_guidance_scale=4.0,
                   num_inference_steps=steps, n_max=steps, output_type="latent",
                   generator=torch.Generator().manual_seed(1)).frames
    assert torch.equal(out, start.latents)


def test_flowedit_on_wan_edits_and_flatten_changes_the_edit(wan_pipe):
    frames = clip9()
    stock = [module.processor for _, module in wan_pipe.backbone.self_attentions()]

    def edit(mode):
        return wan_pipe(frames, "a tiger in the snow", attention_mode=mode, generator=torch.Generator().manual_seed(0),
                        **FAST).frames

    flat, dense = edit("dsta+flatten"), edit("dsta")
    source = wan_pipe.encode_video(frames, torch.Generator().manual_seed(0))
    assert flat.shape == source.shape == (1, 16, 3, 8, 8)  # 9 source frames -> 3 latent frames
    assert (flat - source).abs().max() > 1e-3 and (flat - dense).abs().max() > 1e-5
    assert [module.processor for _, module in wan_pipe.backbone.self_attentions()] == stock
    assert wan_pipe.flatten_context is None


def test_the_output_has_the_frames_asked_for(wan_pipe):
    out = wan_pipe(clip9(), "a dog", generator=torch.Generator().manual_seed(0), **{**FAST, "output_type": "pt"}).frames
    assert out.shape == (9, 3, 64, 64) and 0 <= out.min() and out.max() <= 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(video_frames=8), "4k\\+1 frames"),
    (dict(width=72), "multiple of 16"),
    (dict(method="inversion"), "method for FlattenWanPipeline"),
    (dict(attention_mode="spatial"), "attention mode for Wan"),
    (dict(n_max=9), "n_min <= n_max <= num_inference_steps"),
])
def test_bad_input_is_one_clear_line_before_any_work(wan_pipe, kwargs, message, monkeypatch):
    from conftest import moving_texture

    monkeypatch.setattr(wan_pipe, "encode_video", lambda *a, **k: pytest.fail("the VAE ran"))
    frames = moving_texture(frames=kwargs.pop("video_frames", 9), height=64, width=kwargs.pop("width", 64))
    with pytest.raises(ValueError, match=message):
        wan_pipe(frames, "a cat", **{**FAST, **kwargs})


def test_the_stable_diffusion_pipeline_refuses_flowedit(tiny_pipe):
    with pytest.raises(ValueError, match="method for FlattenPipeline"):
        tiny_pipe(clip9(), "a cat", method="flowedit")


def test_the_registry_picks_the_wan_pipeline_from_model_index(wan_pipe, tmp_path):
    import json

    from flatten_video.pipelines import pipeline_for_index
    from flatten_video.pipelines.pipeline_flatten_wan import FlattenWanPipeline

    index = json.loads((pathlib.Path(wan_pipe.name_or_path) / "model_index.json").read_text())
    assert pipeline_for_index(index) is FlattenWanPipeline
    i2v = {**index, "_class_name": "WanImageToVideoPipeline", "image_encoder": ["transformers", "CLIPVisionModel"]}
    with pytest.raises(ValueError, match="image-to-video checkpoint"):
        pipeline_for_index(i2v)


def test_the_command_line_refuses_a_wan_checkpoint_in_one_line_before_loading(wan_pipe, tmp_path, capsys):
    from conftest import moving_texture
    from flatten_video import cli
    from flatten_video.video import write_video

    source = write_video(moving_texture(frames=9, height=64, width=64), tmp_path / "walk.mp4", fps=8)
    output = tmp_path / "out.mp4"
    code = cli.main(["edit", str(source), "-p", "a cat", "--model", str(wan_pipe.name_or_path), "-o", str(output),
                     "--frames", "9", "--flow", "dis", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "FlattenWanPipeline" in err[0] and not output.exists()
