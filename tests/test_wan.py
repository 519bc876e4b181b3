"""FLATTEN inside Wan's video transformer: the processor against diffusers' stock one and against
a per-trajectory loop, the token grid, and installing for a call only (tiny random Wan: patch
(1, 2, 2), 2 heads x 12, 2 layers)."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from flatten_video.backbones import WanBackbone, backbone_for
from flatten_video.models.context import FlattenConfig, FlattenContext
from flatten_video.models.wan_attention import FlattenWanAttnProcessor

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
    assert out.shape == (1, 9, 3, 64, 64) and 0 <= out.min() and out.max() <= 1  # frames[0] is the video


@pytest.mark.parametrize("kwargs, message", [
    (dict(video_frames=8), "4k\\+1 frames"),
    (dict(width=72), "multiple of 16"),
    (dict(method="noise"), "method for FlattenWanPipeline"),
    (dict(method="inversion"), "n_max is the flowedit method's; method='inversion' does not take it"),
    (dict(inject_steps=2), "inject_steps is the inversion method's; method='flowedit' does not take it"),
    (dict(attention_mode="spatial"), "attention mode for Wan"),
    (dict(n_max=9), "n_min <= n_max <= num_inference_steps"),
    (dict(window=8), "window 8 does not fit .* use 4k\\+1 frames \\(5 or 9\\)"),
    (dict(window=5, overlap=2), "overlap 2 is not a whole number of latent frames: use a multiple of 4"),
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


# -- the command line on Wan ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def walk17(tmp_path_factory):
    """A 17-frame 64x64 mp4 (5 latent frames at Wan's temporal factor 4)."""
    from conftest import moving_texture
    from flatten_video.video import write_video

    return write_video(moving_texture(frames=17, height=64, width=64, shift=2), tmp_path_factory.mktemp("walk") / "walk.mp4",
                       fps=8)


def wan_argv(video, output, model, *extra):
    return ["edit", str(video), "-p", "a tiger", "--model", str(model), "-o", str(output), "--frames", "17", "--width",
            "64", "--height", "64", "--steps", "2", "--n-max", "2", "--flow", "dis", "--device", "cpu", *extra]


def test_the_command_line_edits_a_long_clip_on_wan_in_windows(wan_pipe, walk17, tmp_path, capsys):
    import av

    from flatten_video import cli

    output = tmp_path / "tiger.mp4"
    # 17 source frames in windows of 9 (3 latent frames) sharing 4 (1 latent frame), one anchor.
    code = cli.main(wan_argv(walk17, output, wan_pipe.name_or_path, "--window", "9", "--overlap", "4", "--anchors", "1"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"wrote {output}" in captured.out
    with av.open(str(output)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height, sum(1 for _ in container.decode(stream))) == (64, 64, 17)


def test_the_command_line_inverts_on_wan_and_reuses_the_cached_inversion(wan_pipe, walk17, tmp_path, capsys, monkeypatch):
    from flatten_video import cli
    from flatten_video.pipelines.methods import flow_inversion

    inversions, invert = [], flow_inversion.FlowInversion.invert
    monkeypatch.setattr(flow_inversion.FlowInversion, "invert", lambda *a: inversions.append(1) or invert(*a))
    argv = wan_argv(walk17, tmp_path / "{prompt}.mp4", wan_pipe.name_or_path, "--method", "inversion", "--inject-steps",
                    "1", "--cache-dir", str(tmp_path / "cache"))
    argv.remove("--n-max"), argv.remove("2")  # FlowEdit's option: the inversion method takes none
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert cli.main([*argv, "-p", "a dog"]) == 0, capsys.readouterr().err
    assert inversions == [1]  # the second run loads the inversion the first one kept
    assert (tmp_path / "a-tiger.mp4").exists() and (tmp_path / "a-dog.mp4").exists()


@pytest.mark.parametrize("extra, message", [
    (["--frames", "16"], r"--frames 16 does not fit a VAE that encodes 4 source frames .* use 4k\+1 frames \(13 or 17\)"),
    (["--window", "8"], r"--window 8 does not fit .* \(5 or 9\)"),
    (["--overlap", "6", "--window", "9"], r"--overlap 6 is not a whole number of latent frames: use a multiple of 4"),
    (["--width", "72"], r"--width 72 is not a multiple of 16 \(Wan's VAE and patch\)"),
    (["--control", "canny"], r"there are no ControlNets for Wan: leave out --control"),
    (["--method", "inversion"], r"--n-max is the flowedit method's; --method inversion does not take it"),
    (["--inject-steps", "1"], r"--inject-steps is the inversion method's; --method flowedit does not take it"),
    (["--variant", "I"], r"--variant does not apply to Wan checkpoints"),
    (["--inversion-steps", "4"], r"--inversion-steps does not apply to Wan checkpoints"),
    (["--attention", "flatten"], r"unknown --attention for Wan 'flatten'; choose one of dsta, dsta\+flatten"),
    (["--method", "noise", "--n-max", "35"], r"unknown --method for Wan 'noise'; choose one of flowedit, inversion"),
    (["--guidance-2", "3"], r"--guidance-2 is the low-noise expert's guidance of a two-expert checkpoint .* this one has "
                            r"one transformer: leave it out"),
    (["--guidance-2", "-1"], r"--guidance-2 must be"),
])
def test_bad_wan_options_are_one_line_before_the_model_loads(wan_pipe, walk17, tmp_path, capsys, monkeypatch, extra,
                                                             message):
    import re

    from flatten_video import cli
    from flatten_video.app import runtime

    monkeypatch.setattr(runtime, "load_pipeline", lambda *a, **k: pytest.fail("the model loaded"))
    output = tmp_path / "out.mp4"
    code = cli.main(wan_argv(walk17, output, wan_pipe.name_or_path, *extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and re.search(message, err[0]), err
    assert not output.exists()


def test_a_wan_checkpoint_gets_wans_defaults_and_the_help_says_so():
    from flatten_video.app.settings import EditSettings
    from flatten_video.cli import build_parser

    settings = EditSettings.for_family("wan", prompt="a tiger")
    assert (settings.frames, settings.window, settings.overlap, settings.guidance, settings.method) == (81, 81, 8, 5.0,
                                                                                                        "flowedit")
    settings.check()
    kwargs = settings.pipeline_kwargs()
    assert kwargs["n_max"] == 35 and "flatten_variant" not in kwargs and "num_inversion_steps" not in kwargs
    help_text = " ".join(build_parser(["edit"])._subparsers._group_actions[0].choices["edit"].format_help().split())
    assert "[Wan: 81]" in help_text and "[Wan: flowedit]" in help_text


# -- the paper's inversion on a flow model -------------------------------------------------------

INVERT = dict(flow_method="dis", method="inversion", source_prompt="a cat", generator=None)


def round_trip_error(wan_pipe, steps, attention_mode="dsta+flatten"):
    frames = clip9()
    start = wan_pipe.invert_video(frames, num_inference_steps=steps, attention_mode=attention_mode, inject_steps=0,
                                  **{**INVERT, "generator": torch.Generator().manual_seed(0)})
    back = wan_pipe(inversion=start, prompt="a cat", guidance_scale=1.0, output_type="latent").frames
    source = wan_pipe.encode_video(frames, torch.Generator().manual_seed(0))
    return (back - source).abs().max().item() / source.abs().max().item()


def test_inversion_then_sampling_with_the_source_prompt_comes_back_closer_with_more_steps(wan_pipe):
    coarse, fine = round_trip_error(wan_pipe, 3), round_trip_error(wan_pipe, 24)
    assert fine < coarse / 2 and fine < 0.05, (coarse, fine)


def test_inversion_injects_the_source_query_and_key_like_a_two_pass_reference(wan_pipe):
    """Sampling from an inversion with every step injected, against a reference written here:
    per step, one stock forward of the source latent captures each block's normed query and key,
    a second forward of the edit path has them replaced (forward hooks on ``norm_q``/``norm_k``)."""
    steps, frames = 3, clip9()
    start = wan_pipe.invert_video(frames, num_inference_steps=steps, attention_mode="dsta", inject_steps=steps,
                                  **{**INVERT, "generator": torch.Generator().manual_seed(0)})
    assert sorted(start.source_latents) == sorted(start.injected_timesteps) and len(start.injected_timesteps) == steps
    edited = wan_pipe(inversion=start, prompt="a tiger", guidance_scale=1.0, output_type="latent").frames

    from flatten_video.pipelines.schedule import flow_schedule

    transformer = wan_pipe.transformer
    norms = [(name, module) for name, module in transformer.named_modules()
             if name.endswith("attn1.norm_q") or name.endswith("attn1.norm_k")]
    source_text, target_text = wan_pipe.encode_prompt("a cat"), wan_pipe.encode_prompt("a tiger")
    timesteps, sigmas = flow_schedule(wan_pipe.scheduler, steps)

    def forward(z, t, text, hook):
        handles = [module.register_forward_hook(hook(name)) for name, module in norms]
        try:
            return transformer(hidden_states=z, timestep=torch.tensor([t]), encoder_hidden_states=text,
                               return_dict=False)[0]
        finally:
            for handle in handles:
                handle.remove()

    z = start.latents
    for index, t in enumerate(timesteps):
        captured = {}
        forward(start.source_latents[t], t, source_text,
                lambda name: lambda module, args, output: captured.__setitem__(name, output))
        velocity = forward(z, t, target_text, lambda name: lambda module, args, output: captured[name])
        z = z + (sigmas[index + 1] - sigmas[index]) * velocity
    plain = wan_pipe(inversion=dataclasses.replace(start, injected_timesteps=[], source_latents={}), prompt="a tiger",
                     guidance_scale=1.0, output_type="latent").frames
    torch.testing.assert_close(edited, z, atol=1e-5, rtol=1e-4)
    assert (edited - plain).abs().max() > 1e-3  # injection changed the edit


def test_a_flow_inversion_saved_and_loaded_gives_the_same_edit(wan_pipe, tmp_path):
    from flatten_video.pipelines import EditStart

    start = wan_pipe.invert_video(clip9(), num_inference_steps=3, inject_steps=2,
                                  **{**INVERT, "generator": torch.Generator().manual_seed(0)})
    loaded = EditStart.load(start.save(tmp_path / "start.safetensors"))
    assert loaded.method == "inversion" and loaded.injected_timesteps == start.injected_timesteps
    edit = dict(prompt="a tiger", guidance_scale=2.0, output_type="latent")
    assert torch.equal(wan_pipe(inversion=loaded, **edit).frames, wan_pipe(inversion=start, **edit).frames)


def test_long_clips_run_in_windows_counted_in_source_frames(wan_pipe):
    from conftest import moving_texture

    frames = moving_texture(frames=17, height=64, width=64, shift=2)  # 5 latent frames
    seen = []

    def edit(window, **extra):
        return wan_pipe(frames, "a tiger", window=window, overlap=4, anchors=1, num_inference_steps=2, n_max=2,
                        flow_method="dis", output_type="latent", generator=torch.Generator().manual_seed(0),
                        callback_on_step_end=lambda pipe, i, t, kw: seen.append(pipe.flatten_context.num_latent_frames)
                        or kw, **extra).frames

    whole, covering = edit(0), edit(17)
    assert torch.equal(whole, covering)  # a window that covers the clip is the clip
    assert set(seen) == {5}
    seen.clear()
    windowed = edit(9)  # 3 latent frames a window, 1 shared, plus the anchor where it is outside
    assert windowed.shape == whole.shape and torch.isfinite(windowed).all()
    assert seen and max(seen) <= 4 and (windowed - whole).abs().max() > 0


# -- LoRAs and the page --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wan_lora(wan_pipe, tmp_path_factory):
    """A random LoRA on the tiny transformer's attention projections, saved as diffusers saves one."""
    from diffusers.loaders import WanLoraLoaderMixin
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = WanTransformer3DModel.from_pretrained(pathlib.Path(wan_pipe.name_or_path) / "transformer")
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(0)
    weights = {name: torch.randn(value.shape, generator=generator) * 0.5
               for name, value in get_peft_model_state_dict(transformer).items()}
    target = tmp_path_factory.mktemp("lora") / "wan-lora"
    WanLoraLoaderMixin.save_lora_weights(target, transformer_lora_layers=weights, safe_serialization=True)
    return target


def test_a_wan_lora_is_checked_against_the_transformers_shapes_before_loading(wan_pipe, wan_lora, tmp_path):
    from safetensors.torch import save_file

    from flatten_video.app.runtime import check_lora_fits

    model = wan_pipe.name_or_path
    check_lora_fits(str(wan_lora), model)  # its own LoRA fits
    # One for the 1.3B model (1536 wide): the same module, other widths.
    save_file({"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 1536),
               "transformer.blocks.0.attn1.to_q.lora_B.weight": torch.zeros(1536, 4)}, str(tmp_path / "big.safetensors"))
    with pytest.raises(ValueError, match=r"big\.safetensors does not fit .*: its blocks\.0\.attn1\.to_q maps 1536 features "
                                         r"to 1536, the model's 24 to 24 \(a LoRA trained on another model\)$"):
        check_lora_fits(str(tmp_path / "big.safetensors"), model)


def test_a_lora_changes_the_wan_edit_and_flatten_runs_on_it(wan_pipe, wan_lora):
    from flatten_video.pipelines.pipeline_flatten_wan import FlattenWanPipeline

    pipe = FlattenWanPipeline.from_pretrained(wan_pipe.name_or_path)
    pipe.set_progress_bar_config(disable=True)

    def edit(**kwargs):
        return pipe(clip9(), "a tiger", generator=torch.Generator().manual_seed(0), **FAST, **kwargs).frames

    plain = edit()
    pipe.load_loras([wan_lora], scale=0.7)
    assert pipe.loras == [(str(wan_lora), 0.7)]
    seen = []
    styled = edit(callback_on_step_end=lambda p, i, t, kw: seen.append(
        {type(m.processor) for _, m in p.backbone.self_attentions()}) or kw)
    assert seen and all(kinds == {FlattenWanAttnProcessor} for kinds in seen)  # PEFT wraps to_q, not the processor
    assert (styled - plain).abs().max() > 1e-3
    pipe.set_adapters(["lora0"], [0.0])
    torch.testing.assert_close(edit(), plain, atol=1e-5, rtol=1e-5)


def test_the_page_for_a_wan_checkpoint_offers_wans_options_at_wans_defaults(wan_pipe, tmp_path):
    from flatten_video.app import webui

    editor = webui.Editor(str(wan_pipe.name_or_path), device="cpu", output_dir=tmp_path)
    app = webui.build_app(editor)
    widgets = {b.elem_id.removeprefix("option-").replace("-", "_"): b for b in app.blocks.values()
               if str(getattr(b, "elem_id", "")).startswith("option-")}
    hidden = {name for name, widget in widgets.items() if not widget.visible}
    assert {"variant", "inversion_steps", "feature_mode", "control", "control_scale"} <= hidden
    assert not hidden & {"n_max", "n_min", "n_avg", "source_guidance", "inject_steps", "method", "attention", "window"}
    frames = widgets["frames"]
    assert (frames.value, frames.minimum, frames.step) == (81, 5, 4) and (frames.maximum - 1) % 4 == 0
    assert widgets["method"].value == "flowedit" and widgets["guidance"].value == 5.0
    values = [widgets[name].value for name in webui.FORM_FIELDS]
    values[webui.FORM_FIELDS.index("prompt")] = "a tiger"
    settings = webui.form_settings(*values, family="wan")
    settings.check()
    assert settings.family == "wan" and settings.pipeline_kwargs()["n_max"] == 35


# -- Wan 2.2 A14B: two experts -------------------------------------------------------------------


def test_two_experts_both_get_flatten_and_hand_over_at_the_boundary(wan, wan_pipe, tmp_path):
    import json

    from flatten_video.models.install import self_attention_modules
    from flatten_video.pipelines import pipeline_for_index
    from flatten_video.pipelines.pipeline_flatten_wan import FlattenWanPipeline

    source = FlattenWanPipeline.from_pretrained(wan_pipe.name_or_path)
    torch.manual_seed(7)
    low_noise = WanTransformer3DModel.from_config(wan.config).eval()
    two = FlattenWanPipeline(**{name: component for name, component in source.components.items()
                                if name != "transformer_2"}, transformer_2=low_noise, boundary_ratio=0.5)
    two.save_pretrained(tmp_path / "a14b", safe_serialization=True)
    index = json.loads((tmp_path / "a14b" / "model_index.json").read_text())
    assert pipeline_for_index(index) is FlattenWanPipeline and index["boundary_ratio"] == 0.5
    pipe = FlattenWanPipeline.from_pretrained(tmp_path / "a14b")
    pipe.set_progress_bar_config(disable=True)
    shared = FlattenWanPipeline.from_pipe(pipe)  # the expert hand-over's setting comes along
    assert shared.transformer_2 is pipe.transformer_2 and shared.config.boundary_ratio == 0.5
    with pytest.raises(ValueError, match="needs boundary_ratio"):
        FlattenWanPipeline(**pipe.components)  # a setting, not a component: diffusers' components omit it

    calls = []
    for name in ("transformer", "transformer_2"):
        getattr(pipe, name).register_forward_pre_hook(lambda module, args, kwargs, name=name: calls.append(
            (name, float(kwargs["timestep"][0]), {type(m.processor) for _, m in self_attention_modules(module)})),
            with_kwargs=True)
    frames = clip9()
    start = pipe.invert_video(frames, num_inference_steps=4, flow_method="dis", generator=torch.Generator().manual_seed(0))
    out = pipe(inversion=start, prompt="a tiger", num_inference_steps=4, n_max=4, output_type="latent",
               generator=torch.Generator().manual_seed(1)).frames
    assert {name for name, _, _ in calls} == {"transformer", "transformer_2"}
    assert all((t >= 500) == (name == "transformer") for name, t, _ in calls)  # boundary 0.5 x 1000
    assert all(kinds == {FlattenWanAttnProcessor} for _, _, kinds in calls)
    assert len(pipe.backbone.self_attentions()) == 4 and torch.isfinite(out).all()
    stock = {type(m.processor) for _, m in pipe.backbone.self_attentions()}
    assert FlattenWanAttnProcessor not in stock
    same = pipe(inversion=start, prompt="", guidance_scale=3.0, source_guidance_scale=3.0, num_inference_steps=4,
                n_max=4, output_type="latent", generator=torch.Generator().manual_seed(1)).frames
    assert torch.equal(same, start.latents)  # FlowEdit's identity holds across the hand-over


def test_the_low_noise_expert_takes_guidance_scale_2_as_in_diffusers(wan, wan_pipe, monkeypatch):
    import flatten_video.pipelines.pipeline_flatten_wan as wan_module
    from flatten_video.pipelines.pipeline_flatten_wan import FlattenWanPipeline
    from flatten_video.pipelines.samplers import guided

    torch.manual_seed(7)
    low_noise = WanTransformer3DModel.from_config(wan.config).eval()
    two = FlattenWanPipeline(**{name: component for name, component in wan_pipe.components.items()
                                if name != "transformer_2"}, transformer_2=low_noise, boundary_ratio=0.5)
    two.set_progress_bar_config(disable=True)
    start = two.invert_video(clip9(), num_inference_steps=4, flow_method="dis", generator=torch.Generator().manual_seed(0))
    options = dict(inversion=start, prompt="a tiger", negative_prompt="blurry", num_inference_steps=4, n_max=4,
                   output_type="latent")

    timesteps, scales = [], []
    for name in ("transformer", "transformer_2"):
        getattr(two, name).register_forward_pre_hook(
            lambda module, args, kwargs: timesteps.append(float(kwargs["timestep"][0])), with_kwargs=True)

    def spy(prediction, scale, halves=None):
        if halves is not None:  # the target's guidance (the source's is FlowEdit's own)
            scales.append(scale)
        return guided(prediction, scale, halves)

    monkeypatch.setattr(wan_module, "guided", spy)
    two(**options, guidance_scale=4.0, guidance_scale_2=2.0, generator=torch.Generator().manual_seed(1))
    assert len(scales) == len(timesteps) and {t >= 500 for t in timesteps} == {True, False}
    assert scales == [4.0 if t >= 500 else 2.0 for t in timesteps]  # boundary 0.5 x 1000, as the experts

    monkeypatch.undo()
    default = two(**options, guidance_scale=4.0, generator=torch.Generator().manual_seed(1)).frames
    same = two(**options, guidance_scale=4.0, guidance_scale_2=4.0, generator=torch.Generator().manual_seed(1)).frames
    unguided = two(**options, guidance_scale=4.0, guidance_scale_2=1.0, generator=torch.Generator().manual_seed(1)).frames
    assert torch.equal(default, same) and not torch.equal(default, unguided) and torch.isfinite(unguided).all()
    with pytest.raises(ValueError, match="two-expert checkpoint"):
        wan_pipe(**options, guidance_scale_2=3.0)


def test_guidance_of_a_step_that_is_not_guided_is_the_conditional_half():
    from flatten_video.pipelines.samplers import guided

    prediction = torch.randn(2, 3, 4)
    uncond, cond = prediction.chunk(2)
    assert torch.equal(guided(prediction, 5.0), uncond + 5.0 * (cond - uncond))
    assert torch.equal(guided(prediction, 5.0, halves=True), guided(prediction, 5.0))
    assert torch.equal(guided(prediction, 1.0, halves=True), cond)  # the rows were made for another step
    assert guided(prediction, 1.0) is prediction and guided(prediction, 5.0, halves=False) is prediction


# -- the benchmark, loading, and checkpoints this version refuses -------------------------------


def test_the_benchmark_edits_with_wans_method_and_defaults(wan_pipe, clip_path, tmp_path, capsys):
    import csv
    import json

    from flatten_video import cli
    from test_bench import HEADER, OFFICIAL_ROWS, write_frames

    root = tmp_path / "tgve"
    write_frames(root / "DAVIS_480p" / "480p_frames" / "dog", frames=5)
    write_frames(root / "videvo_480p" / "480p_frames" / "car", frames=5, seed=1)
    with open(root / "LOVEU-TGVE-2023_Dataset.csv", "w", newline="") as file:
        csv.writer(file).writerows([HEADER, *OFFICIAL_ROWS])
    code = cli.main(["bench", str(root), "-o", str(tmp_path / "out"), "--model", str(wan_pipe.name_or_path),
                     "--frames", "5", "--width", "64", "--height", "64", "--steps", "2", "--n-max", "2", "--flow", "dis",
                     "--device", "cpu", "--edits", "style", "--clip-model", clip_path, "--pick-model", clip_path,
                     "--pick-processor", clip_path])
    assert code == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "out" / "items" / "DAVIS_480p" / "dog" / "style.json").read_text())
    assert record["settings"]["method"] == "flowedit" and record["settings"]["guidance"] == 5.0
    assert record["settings"]["n_max"] == 2 and record["frames"]["count"] == 5


def test_on_a_gpu_the_app_loads_wan_with_model_cpu_offload(wan_pipe, monkeypatch):
    """The text encoder's memory is given back before the transformer runs (checked on the
    code path here; the GPU figures are gpu.sh's)."""
    from flatten_video.app import runtime
    from flatten_video.pipelines.pipeline_flatten_wan import FlattenWanPipeline

    offloaded = []
    monkeypatch.setattr(FlattenWanPipeline, "enable_model_cpu_offload", lambda self, device=None: offloaded.append(device))
    monkeypatch.setattr(FlattenWanPipeline, "to", lambda self, *a, **k: pytest.fail("moved whole to the GPU"))
    pipe = runtime.load_pipeline(str(wan_pipe.name_or_path), "cuda", torch.float32)
    assert isinstance(pipe, FlattenWanPipeline) and offloaded == ["cuda"]


@pytest.mark.parametrize("changes, message", [
    (dict(_class_name="WanImageToVideoPipeline"), "image-to-video checkpoint"),
    (dict(image_encoder=["transformers", "CLIPVisionModel"]), "image-to-video checkpoint"),
    (dict(expand_timesteps=True), "TI2V-5B"),
    (dict(_class_name="WanVACEPipeline", transformer=["diffusers", "WanVACETransformer3DModel"]),
     "cannot edit with a WanVACEPipeline checkpoint \\(denoiser: transformer \\(WanVACETransformer3DModel\\)\\)"),
])
def test_wan_checkpoints_this_version_cannot_edit_are_one_line(wan_pipe, changes, message):
    import json

    from flatten_video.pipelines import pipeline_for_index

    index = json.loads((pathlib.Path(wan_pipe.name_or_path) / "model_index.json").read_text())
    with pytest.raises(ValueError, match=message):
        pipeline_for_index({**index, **changes})
    assert pipeline_for_index({**index, "expand_timesteps": False, "transformer_2": [None, None]})


def test_flowedit_encodes_each_text_once(wan_pipe):
    texts = []
    original = wan_pipe.encode_prompt
    wan_pipe.encode_prompt = lambda prompt, *a, **k: texts.append(prompt) or original(prompt, *a, **k)
    try:
        start = wan_pipe.invert_video(clip9(), num_inference_steps=2, flow_method="dis", source_prompt="a cat",
                                      generator=torch.Generator().manual_seed(0))
        wan_pipe(inversion=start, prompt="a tiger", num_inference_steps=2, n_max=2, output_type="latent",
                 generator=torch.Generator().manual_seed(0))
    finally:
        del wan_pipe.encode_prompt
    assert sorted(texts) == ["", "a cat", "a tiger"]  # the negative prompt serves both guidances


def test_wan_edits_a_list_of_prompts_from_one_start(wan_pipe):
    out = wan_pipe(clip9(), ["a tiger", "a dog"], generator=torch.Generator().manual_seed(0), **FAST).frames
    assert out.shape == (2, 16, 3, 8, 8) and not torch.equal(out[0], out[1])


def test_a_loaded_wan_pipeline_becomes_a_flatten_one_sharing_its_modules(wan_pipe):
    from diffusers import UniPCMultistepScheduler, WanPipeline

    from flatten_video.pipelines.pipeline_flatten_wan import FlattenWanPipeline

    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    stock = WanPipeline(tokenizer=wan_pipe.tokenizer, text_encoder=wan_pipe.text_encoder, vae=wan_pipe.vae,
                        transformer=wan_pipe.transformer, scheduler=scheduler)
    for pipe in (FlattenWanPipeline.from_pipe(stock), FlattenWanPipeline(**stock.components)):
        assert pipe.transformer is stock.transformer and pipe.vae is stock.vae
        assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler" and pipe.scheduler.config.shift == 3.0
