"""The editing pipeline on tiny random Stable Diffusion models (docs/architecture.md, The method, steps 5-7)."""

import inspect
import logging
import os

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file

from conftest import REFERENCE_CASES, moving_texture, require_reference
from flatten_video import FlattenPipeline, Trajectories
from flatten_video.models import InjectionSpec, available_memory
from flatten_video.pipelines import FlattenInversion, ModelLoadError

#: The paper's injection points on SD 1.x/2.x (docs/architecture.md, The method, step 6), named as its code names them.
RESNET_POINTS = ("up_blocks.1.resnets.0", "up_blocks.1.resnets.1", "up_blocks.2.resnets.0")
ATTENTION_POINTS = tuple(
    f"{block}.transformer_blocks.0.attn1"
    for block in (
        "up_blocks.1.attentions.1",
        "up_blocks.1.attentions.2",
        "up_blocks.2.attentions.0",
        "up_blocks.2.attentions.1",
        "up_blocks.2.attentions.2",
        "up_blocks.3.attentions.0",
    )
)

STEPS = dict(num_inference_steps=2, num_inversion_steps=4)


@pytest.fixture(scope="module")
def source(tiny_pipe):
    frames = moving_texture(frames=3, height=64, width=96)
    trajectories = tiny_pipe.prepare_trajectories(frames, flow_method="dis", progress=False)
    latents = tiny_pipe.encode_video(frames, torch.Generator().manual_seed(0))
    return frames, trajectories, latents


def edit(pipe, source, **kwargs):
    frames, trajectories, latents = source
    options = dict(STEPS, inject_steps=2, trajectories=trajectories, latents=latents, output_type="latent")
    options.update(kwargs)
    return pipe(frames, "a cat", **options).frames


def test_reproduces_the_paper_pipeline(tiny_pipe):
    """Faithfulness: the paper's inversion and injected sampling on tiny-sd (reduced steps)."""
    case = load_file(require_reference(REFERENCE_CASES / "paper-pipeline" / "case.safetensors"))
    trajectories = {tuple(case["labels"].shape[1:]): Trajectories.from_labels(case["labels"])}
    inversion = tiny_pipe.invert(
        case["z0"],
        trajectories,
        num_inversion_steps=10,
        num_inference_steps=5,
        inject_steps=4,
        feature_dtype=torch.float32,
    )
    assert (inversion.latents - case["zT"]).abs().max() < 1e-5
    assert inversion.injected_timesteps == [801, 601, 401, 201]
    final = tiny_pipe.sample(inversion, "a cat", "", guidance_scale=10.0)
    # Guidance 10 amplifies float noise (the reference's README: an independent reimplementation
    # reached 2e-4); final latents are of magnitude ~10.
    assert (final - case["final_latents"]).abs().max() < 1e-3


def test_captured_timesteps_are_the_sampling_timesteps(tiny_pipe, source):
    _, trajectories, latents = source
    inversion = tiny_pipe.invert(latents, trajectories, num_inversion_steps=20, num_inference_steps=5, inject_steps=3)
    tiny_pipe.scheduler.set_timesteps(5)
    expected = [int(t) for t in tiny_pipe.scheduler.timesteps[:3]]
    assert inversion.injected_timesteps == expected
    assert sorted(inversion.features.features) == sorted(expected)
    stored = inversion.features.features[expected[0]]
    assert set(RESNET_POINTS) <= set(stored)
    assert stored[RESNET_POINTS[0]].dtype == tiny_pipe.unet.dtype  # kept as the U-Net computes them
    assert stored[RESNET_POINTS[0]].shape[0] == latents.shape[2]  # one copy, not one per guidance half
    half = tiny_pipe.invert(latents, trajectories, num_inversion_steps=20, num_inference_steps=5, inject_steps=3,
                            feature_dtype=torch.float16)
    assert half.features.features[expected[0]][RESNET_POINTS[0]].dtype == torch.float16


def test_stored_and_recomputed_features_give_the_same_edit(tiny_pipe, source):
    """What a resumed edit (its inversion loaded from the cache: recompute mode) gives is the
    uninterrupted edit (stored features), to float rounding: the features are kept in the U-Net's
    dtype, not rounded to float16."""
    frames, trajectories, latents = source
    options = dict(STEPS, inject_steps=2, trajectories=trajectories, latents=latents)
    stored = tiny_pipe(frames, "a cat", feature_mode="stored", output_type="pt", **options).frames[0]
    recomputed = tiny_pipe(frames, "a cat", feature_mode="recompute", output_type="pt", **options).frames[0]
    assert (stored - recomputed).abs().max() * 255 < 0.5  # the same 8-bit frames, give or take a rounding


def test_injected_features_reach_both_guidance_halves(tiny_pipe, source):
    _, trajectories, latents = source
    frames = latents.shape[2]
    inversion = tiny_pipe.invert(latents, trajectories, **STEPS, inject_steps=1, feature_dtype=torch.float32)
    rows, _ = injected_rows(tiny_pipe, inversion)
    stored = inversion.features.features[inversion.injected_timesteps[0]][RESNET_POINTS[0]]
    assert rows.shape[0] == 2 * frames
    assert torch.equal(rows[:frames], stored) and torch.equal(rows[frames:], stored)
    free = tiny_pipe.invert(latents, trajectories, **STEPS, inject_steps=0)
    rows, _ = injected_rows(tiny_pipe, free)
    assert not torch.allclose(rows[:frames], rows[frames:])


def test_same_seed_same_output_and_flatten_matters(tiny_pipe, source):
    first = edit(tiny_pipe, source)
    again = edit(tiny_pipe, source)
    assert torch.equal(first, again)
    without_flatten = edit(tiny_pipe, source, attention_mode="dsta")
    assert (first - without_flatten).abs().max() > 1e-4


def injected_rows(pipe, inversion, point=RESNET_POINTS[0]):
    """The output of ``point`` at the first sampling step, as the rest of the U-Net sees it."""
    seen = []
    conv2 = dict(pipe.unet.named_modules())[point].conv2
    handle = conv2.register_forward_hook(lambda module, args, output: seen.append(output.detach().clone()))
    try:
        out = pipe.sample(inversion, "a cat", guidance_scale=10.0)
    finally:
        handle.remove()
    return seen[0], out


def test_recompute_mode_gives_the_stored_mode_features_and_output(tiny_pipe, source):
    _, trajectories, latents = source
    frames = latents.shape[2]
    options = dict(STEPS, inject_steps=2)
    stored = tiny_pipe.invert(latents, trajectories, **options, feature_dtype=torch.float32)
    kept = tiny_pipe.invert(latents, trajectories, **options, feature_mode="recompute")
    assert kept.features is None and sorted(kept.source_latents) == sorted(kept.injected_timesteps)
    assert kept.held_bytes == 2 * latents.numel() * latents.element_size()
    stored_rows, stored_out = injected_rows(tiny_pipe, stored)
    recomputed_rows, recomputed_out = injected_rows(tiny_pipe, kept)
    # The source row leads the recompute batch; the two guidance halves follow.
    assert recomputed_rows.shape[0] == 3 * frames
    for half in range(3):
        rows = recomputed_rows[half * frames : (half + 1) * frames]
        assert torch.allclose(rows, stored_rows[:frames], atol=1e-5, rtol=0)
    # Same features; the U-Net runs a batch of 3 instead of 2 videos, which moves float
    # rounding, and guidance 10 amplifies it: equal to 1e-4 on latents of magnitude ~2.
    assert torch.allclose(recomputed_out, stored_out, atol=1e-4, rtol=0)


def same_features(a, b) -> bool:
    """Whether two FeatureStores hold the same tensors under the same (timestep, layer) keys."""
    if a.features.keys() != b.features.keys():
        return False
    return all(
        a.features[t].keys() == b.features[t].keys()
        and all(torch.equal(a.features[t][name], b.features[t][name]) for name in a.features[t])
        for t in a.features
    )


def test_auto_mode_within_budget_stores_the_features(tiny_pipe, source):
    _, trajectories, latents = source
    options = dict(STEPS, inject_steps=2)
    stored = tiny_pipe.invert(latents, trajectories, **options, feature_mode="stored")
    auto = tiny_pipe.invert(latents, trajectories, **options, feature_mode="auto", feature_memory_budget=2**60)
    assert auto.feature_mode == "stored"
    assert sorted(auto.source_latents) == sorted(auto.injected_timesteps)  # kept in every mode, for save()
    assert same_features(auto.features, stored.features)
    # Exactly at the budget still stores: the estimate is one step's features times the steps.
    at_budget = tiny_pipe.invert(latents, trajectories, **options, feature_memory_budget=stored.held_bytes)
    assert at_budget.feature_mode == "stored"
    assert tiny_pipe.flatten_context is None  # nothing of the call is kept


def test_auto_mode_over_budget_recomputes_like_recompute_mode(tiny_pipe, source, caplog):
    _, trajectories, latents = source
    options = dict(STEPS, inject_steps=2)
    kept = tiny_pipe.invert(latents, trajectories, **options, feature_mode="recompute")
    stored = tiny_pipe.invert(latents, trajectories, **options, feature_mode="stored")
    with caplog.at_level(logging.INFO, logger="flatten_video"):
        auto = tiny_pipe.invert(
            latents, trajectories, **options, feature_mode="auto", feature_memory_budget=stored.held_bytes - 1
        )
    assert "recomputing" in caplog.text and "GiB" in caplog.text
    assert auto.feature_mode == "recompute" and auto.features is None
    assert tiny_pipe.flatten_context is None  # nothing of the call is kept
    assert sorted(auto.source_latents) == sorted(kept.source_latents) == sorted(auto.injected_timesteps)
    for t, latent in kept.source_latents.items():
        assert torch.equal(auto.source_latents[t], latent)
    assert auto.held_bytes == kept.held_bytes
    assert torch.equal(auto.latents, kept.latents)
    # Same inputs, same batch: the same sampling, to the bit.
    _, auto_out = injected_rows(tiny_pipe, auto)
    _, kept_out = injected_rows(tiny_pipe, kept)
    assert torch.equal(auto_out, kept_out)


def test_saved_inversion_loads_and_edits_like_the_original(tiny_pipe, source, tmp_path):
    _, trajectories, latents = source
    original = tiny_pipe.invert(
        latents, trajectories, **STEPS, inject_steps=2, feature_mode="stored", feature_dtype=torch.float32
    )
    path = original.save(tmp_path / "cache" / "walk.safetensors")
    assert [p.name for p in path.parent.iterdir()] == ["walk.safetensors"]  # no temporary file left

    loaded = FlattenInversion.load(path)
    assert loaded.feature_mode == "recompute" and loaded.features is None
    assert torch.equal(loaded.latents, original.latents)
    assert loaded.injected_timesteps == original.injected_timesteps
    assert loaded.num_inference_steps == original.num_inference_steps
    assert loaded.trajectories.keys() == original.trajectories.keys()
    for grid, trajectory in original.trajectories.items():
        assert torch.equal(loaded.trajectories[grid].labels, trajectory.labels)
    # The stored features are not saved; recomputed from the saved latents they give the same edit.
    _, original_out = injected_rows(tiny_pipe, original)
    _, loaded_out = injected_rows(tiny_pipe, loaded)
    assert torch.allclose(loaded_out, original_out, atol=1e-4, rtol=0)
    # And the whole pipeline takes it in place of a video.
    edited = tiny_pipe(inversion=loaded, prompt="a cat", output_type="latent").frames
    assert edited.shape == latents.shape


@pytest.mark.parametrize("damage", ["truncated", "foreign", "incomplete"])
def test_loading_a_damaged_inversion_is_a_clear_error(tiny_pipe, source, tmp_path, damage):
    from safetensors.torch import save_file

    _, trajectories, latents = source
    path = tiny_pipe.invert(latents, trajectories, **STEPS, inject_steps=2).save(tmp_path / "inv.safetensors")
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "foreign":
        save_file({"weight": torch.zeros(2)}, path)
    else:
        loaded = FlattenInversion.load(path)
        loaded.source_latents.popitem()
        loaded.save(path)
    with pytest.raises(ValueError, match="inversion|source latents"):
        FlattenInversion.load(path)


def test_auto_mode_default_budget_is_half_the_available_memory(tiny_pipe, source, monkeypatch):
    _, trajectories, latents = source
    options = dict(STEPS, inject_steps=2)
    monkeypatch.setattr("flatten_video.models.features.available_memory", lambda: 2)  # a budget of 1 byte
    assert tiny_pipe.invert(latents, trajectories, **options).feature_mode == "recompute"
    monkeypatch.setattr("flatten_video.models.features.available_memory", lambda: None)  # unknown: no limit
    assert tiny_pipe.invert(latents, trajectories, **options).feature_mode == "stored"


def test_features_are_placed_by_the_budgets_rule():
    from flatten_video.models.features import device_budget, feature_placement

    assert feature_placement(10, on_device=10, on_host=None, mode="stored") == "device"  # fits exactly
    assert feature_placement(11, on_device=10, on_host=None, mode="stored") == "host"
    assert feature_placement(11, on_device=10, on_host=None, mode="auto") == "host"  # no host limit
    assert feature_placement(11, on_device=10, on_host=11, mode="auto") == "host"
    assert feature_placement(12, on_device=10, on_host=11, mode="auto") == "recompute"
    assert feature_placement(12, on_device=10, on_host=11, mode="stored") == "host"  # stored is asked for
    assert feature_placement(1, on_device=None, on_host=None, mode="auto") == "host"  # no accelerator
    assert device_budget("cpu") is None


def test_the_store_stays_on_the_device_within_its_budget_else_moves_to_the_host(tiny_pipe, source, monkeypatch):
    """The placement is settled at the first step inversion records, from that step's size times
    the injected steps; either way the same features are kept."""
    from flatten_video.models.features import FeatureStore

    _, trajectories, latents = source
    options = dict(STEPS, inject_steps=2, feature_mode="stored")
    reference = tiny_pipe.invert(latents, trajectories, **options)
    moves, move_to = [], FeatureStore.move_to

    def spied_move_to(store, device):
        moves.append(str(device))
        move_to(store, device)

    monkeypatch.setattr(FeatureStore, "move_to", spied_move_to)
    for budget, moved in ((reference.held_bytes, []), (reference.held_bytes - 1, ["cpu"])):
        monkeypatch.setattr("flatten_video.pipelines.methods.ddim_inversion.device_budget", lambda device: budget)
        moves.clear()
        placed = tiny_pipe.invert(latents, trajectories, **options)
        assert moves == moved and placed.feature_mode == "stored"
        assert same_features(placed.features, reference.features)


def test_auto_is_the_default_feature_mode(tiny_pipe, source):
    for method in (FlattenPipeline.invert, FlattenPipeline.__call__):
        parameters = inspect.signature(method).parameters
        assert parameters["feature_mode"].default == "auto"
        assert parameters["feature_memory_budget"].default is None
    _, trajectories, latents = source
    # The tiny model's features fit any host's budget; no injection resolves to stored as well.
    assert tiny_pipe.invert(latents, trajectories, **STEPS, inject_steps=2).feature_mode == "stored"
    assert tiny_pipe.invert(latents, trajectories, **STEPS, inject_steps=0).feature_mode == "stored"
    with pytest.raises(ValueError, match="stored, recompute, auto"):
        tiny_pipe.invert(latents, trajectories, **STEPS, feature_mode="disk")
    with pytest.raises(ValueError, match="feature_memory_budget"):
        tiny_pipe.invert(latents, trajectories, **STEPS, feature_memory_budget=-1)


def test_available_memory_on_this_host():
    available = available_memory()
    assert isinstance(available, int) and available > 0


def test_available_memory_reads_memavailable(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\n")
    monkeypatch.setattr(os, "sysconf", lambda name: pytest.fail("sysconf read despite MemAvailable"))
    assert available_memory(meminfo) == 8000000 * 1024


def test_available_memory_falls_back_to_sysconf(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:         1000000 kB\n")  # a kernel before 3.14
    pages = {"SC_AVPHYS_PAGES": 3, "SC_PHYS_PAGES": 5, "SC_PAGE_SIZE": 4096}

    def sysconf(name):
        if name not in pages:
            raise ValueError(name)
        return pages[name]

    monkeypatch.setattr(os, "sysconf", sysconf)
    assert available_memory(meminfo) == 3 * 4096
    del pages["SC_AVPHYS_PAGES"]  # macOS has no free-page count
    assert available_memory(tmp_path / "missing") == 5 * 4096
    pages.clear()
    assert available_memory(tmp_path / "missing") is None


def test_inversion_round_trip_returns_near_the_source(tiny_pipe, source):
    """Invert, then sample with the empty prompt, guidance 1 and injection on every step.

    A random U-Net is no denoiser: its noise predictions swing with its input, so DDIM's
    round trip diverges on it. Damping its output 1000x keeps every path (FLATTEN, injection,
    both schedules) but makes the noise prediction nearly constant, which is where the round
    trip is exact up to the schedules' ends: inversion scales the latent by
    sqrt(a[T_inv] / a[1]), and sampling, which starts one inversion step lower (at the
    paper's t = 981 while z_T sits at 991), by sqrt(a_final / a[T_sample]). The result must
    equal the source times that factor, to 1% (the damped predictions' share). Any slip in the
    timestep walk changes the factor by several percent.
    """
    _, trajectories, latents = source
    conv_out = tiny_pipe.unet.conv_out
    saved = [p.detach().clone() for p in conv_out.parameters()]
    try:
        with torch.no_grad():
            for p in conv_out.parameters():
                p.mul_(1e-3)
        inversion = tiny_pipe.invert(latents, trajectories, num_inversion_steps=100, num_inference_steps=50, inject_steps=50)
        back = tiny_pipe.sample(inversion, "", guidance_scale=1.0)
    finally:
        with torch.no_grad():
            for p, value in zip(conv_out.parameters(), saved):
                p.copy_(value)
    alphas = tiny_pipe.scheduler.alphas_cumprod
    final = tiny_pipe.scheduler.final_alpha_cumprod
    factor = torch.sqrt(alphas[991] / alphas[1] * final / alphas[981])
    error = (back - factor * latents).norm() / latents.norm()
    assert error < 0.01
    # So the round trip lands within the paper's schedule bias (|1 - factor|, about 6%) plus 1%.
    assert (back - latents).norm() / latents.norm() < (1 - factor) + 0.01


def test_callback_on_step_end_sees_and_replaces_latents(tiny_pipe, source):
    calls = []

    def callback(pipe, step, timestep, kwargs):
        calls.append((step, timestep))
        return {"latents": kwargs["latents"] * 0}

    out = edit(tiny_pipe, source, callback_on_step_end=callback)
    assert [c[0] for c in calls] == [0, 1]
    assert torch.count_nonzero(out) == 0


def test_loras_change_the_edit_and_flatten_runs_on_them(tiny_sd_path, tiny_lora_path):
    from flatten_video.models.attention import FlattenAttnProcessor

    frames = moving_texture(frames=3, height=64, width=96)
    options = dict(**STEPS, inject_steps=1, flow_method="dis", output_type="latent")
    pipe = FlattenPipeline.from_pretrained(tiny_sd_path)
    pipe.set_progress_bar_config(disable=True)
    plain = pipe(frames, "a cat", generator=torch.Generator().manual_seed(1), **options).frames

    pipe.load_loras([tiny_lora_path], scale=0.5)
    assert pipe.loras == [(str(tiny_lora_path), 0.5)]
    attn1 = pipe.unet.up_blocks[1].attentions[1].transformer_blocks[0].attn1
    seen = []
    record = lambda pipe, step, t, kwargs: seen.append(type(attn1.processor))  # noqa: E731
    styled = pipe(frames, "a cat", generator=torch.Generator().manual_seed(1), callback_on_step_end=record, **options).frames
    assert seen and all(kind is FlattenAttnProcessor for kind in seen)  # PEFT wraps to_q, not the processor
    assert (styled - plain).abs().max() > 1e-3
    pipe.set_adapters(["lora0"], [0.0])  # weight 0: the plain model again
    assert torch.allclose(pipe(frames, "a cat", generator=torch.Generator().manual_seed(1), **options).frames, plain, atol=1e-5)


def test_bad_loras_get_a_clear_error_and_pickles_are_not_read(tiny_sd_path, tiny_lora_path, tmp_path):
    pipe = FlattenPipeline.from_pretrained(tiny_sd_path)
    with pytest.raises(ModelLoadError, match="could not load the LoRA") as info:
        pipe.load_loras([tmp_path / "missing.safetensors"])
    assert "\n" not in str(info.value)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save(load_file(tiny_lora_path / "pytorch_lora_weights.safetensors"), pickled / "pytorch_lora_weights.bin")
    with pytest.raises(ModelLoadError, match="could not load the LoRA"):
        pipe.load_loras([pickled])
    # One of another model's widths that no check caught before loading (a single-file model's):
    # torch's dozens of size mismatches become one line.
    block = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    save_file({f"unet.{block}.lora_A.weight": torch.zeros(4, 640), f"unet.{block}.lora_B.weight": torch.zeros(640, 4)},
              str(tmp_path / "wide.safetensors"))
    logged = []  # what diffusers' peft loader logs past its filters: not its many-line copy of the error
    handler = logging.Handler()
    handler.emit = logged.append
    logging.getLogger("diffusers.loaders.peft").addHandler(handler)
    try:
        with pytest.raises(ModelLoadError, match=r"wide\.safetensors.: it was trained on another model \(2 tensors of "
                                                 r"other shapes; the first: size mismatch for down_blocks\.1\..*to_q\.lora_A") as info:
            pipe.load_loras([tmp_path / "wide.safetensors"])
    finally:
        logging.getLogger("diffusers.loaders.peft").removeHandler(handler)
    assert "\n" not in str(info.value)
    assert not [record for record in logged if "size mismatch" in record.getMessage()]
    assert pipe.loras == []


@pytest.mark.parametrize("layout", ["tiny_sd_path", "tiny_sd21_path"])
def test_sd15_and_sd21_layouts_edit_end_to_end(layout, request):
    pipe = FlattenPipeline.from_pretrained(request.getfixturevalue(layout))
    pipe.set_progress_bar_config(disable=True)
    frames = moving_texture(frames=3, height=64, width=128)
    out = pipe(frames, "a cat", **STEPS, inject_steps=1, flow_method="dis", generator=torch.Generator().manual_seed(1))
    assert len(out.frames) == 1 and len(out.frames[0]) == 3 and out.frames[0][0].size == (128, 64)  # frames[0]: the video
    as_np = pipe(frames, "a cat", **STEPS, inject_steps=1, flow_method="dis", output_type="np").frames
    assert as_np.shape == (1, 3, 64, 128, 3) and np.isfinite(as_np).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(inject_steps=3), "inject_steps"),
        (dict(num_inference_steps=0), "at least 1"),
        (dict(attention_mode="temporal"), "attention mode"),
        (dict(flatten_variant="III"), "variant"),
        (dict(num_inversion_steps=3), "inversion"),
        (dict(feature_mode="disk"), "feature mode"),
        (dict(output_type="gif"), "output_type"),
    ],
)
def test_bad_arguments_get_clear_errors(tiny_pipe, source, kwargs, message):
    with pytest.raises(ValueError, match=message):
        edit(tiny_pipe, source, **kwargs)


def test_bad_videos_get_clear_errors(tiny_pipe):
    with pytest.raises(ValueError, match="at least 2 frames"):
        tiny_pipe(moving_texture(frames=1), "a cat", **STEPS, inject_steps=1)
    with pytest.raises(ValueError, match="multiple of 8"):
        tiny_pipe(torch.rand(3, 3, 60, 96), "a cat", **STEPS, inject_steps=1)


def test_unet_without_injection_points_is_refused():
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=8,
    )
    with pytest.raises(ValueError, match="inject_steps=0"):
        InjectionSpec.from_unet(unet)


def test_unknown_models_get_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="could not load"):
        FlattenPipeline.from_pretrained(tmp_path / "missing")
    with pytest.raises(ModelLoadError, match="no-such-org/no-such-model"):
        FlattenPipeline.from_pretrained("no-such-org/no-such-model")


def test_long_prompts_are_truncated_with_one_short_warning(tiny_pipe, caplog):
    with caplog.at_level(logging.WARNING):
        embeds = tiny_pipe.encode_prompt("a cat " * 100)
    assert embeds.shape[1] == tiny_pipe.tokenizer.model_max_length
    (record,) = caplog.records  # transformers' own 'sequence length' line is not printed
    assert record.name.startswith("flatten_video") and "tokens; dropped: '" in record.getMessage()
    assert len(record.getMessage()) < 160


# ----------------------------------------------------------------------------- FLATTEN scoped to a call


def stock_state(unet):
    from flatten_video import VideoGroupNorm

    return (
        {name: type(p) for name, p in unet.attn_processors.items()},
        sum(isinstance(m, VideoGroupNorm) for m in unet.modules()),
        sum(len(m._forward_hooks) for m in unet.modules()),
    )


def test_the_unet_is_stock_after_every_call_even_a_failed_one(tiny_pipe, source):
    from flatten_video.models.attention import FlattenAttnProcessor

    before = stock_state(tiny_pipe.unet)
    assert before[1] == 0 and FlattenAttnProcessor not in before[0].values()
    edit(tiny_pipe, source, feature_mode="recompute")
    assert stock_state(tiny_pipe.unet) == before and tiny_pipe.flatten_context is None

    during = []

    def crash(pipe, step, timestep, kwargs):
        during.append(stock_state(pipe.unet))
        raise RuntimeError("stopped by the user")

    with pytest.raises(RuntimeError, match="stopped by the user"):
        edit(tiny_pipe, source, callback_on_step_end=crash)
    assert during[0][1] > 0 and FlattenAttnProcessor in during[0][0].values()  # installed while it ran
    assert stock_state(tiny_pipe.unet) == before and tiny_pipe.flatten_context is None


def test_a_shared_unet_serves_a_plain_diffusers_pipeline_between_edits(tiny_pipe, source):
    from diffusers import StableDiffusionPipeline

    plain = StableDiffusionPipeline(**{k: getattr(tiny_pipe, k) for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")},
                                    safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    plain.set_progress_bar_config(disable=True)

    def image():
        return plain("a cat", num_inference_steps=2, height=64, width=64, generator=torch.Generator().manual_seed(0),
                     output_type="np").images

    first = image()
    edit(tiny_pipe, source)
    assert np.array_equal(image(), first)


# ----------------------------------------------------------------------------- the inversion's config


def test_inversion_records_its_config_and_edits_with_it(tiny_pipe, source, tmp_path):
    from flatten_video import FlattenConfig

    frames, trajectories, latents = source
    options = dict(STEPS, inject_steps=2, trajectories=trajectories, latents=latents)
    inversion = tiny_pipe.invert_video(frames, attention_mode="dsta", flatten_variant="I", **options)
    assert inversion.config == FlattenConfig("dsta", "I", (0,)) and inversion.num_inversion_steps == 4
    loaded = FlattenInversion.load(inversion.save(tmp_path / "inv.safetensors"))
    assert loaded.config == inversion.config and loaded.num_inversion_steps == 4

    # Left out, the inversion's settings are used: the same edit as asking for them from the start.
    from_inversion = tiny_pipe(inversion=loaded, prompt="a cat", output_type="latent").frames
    direct = edit(tiny_pipe, source, attention_mode="dsta", flatten_variant="I", feature_mode="recompute")
    assert torch.allclose(from_inversion, direct, atol=1e-5, rtol=0)
    assert (from_inversion - edit(tiny_pipe, source, feature_mode="recompute")).abs().max() > 1e-3  # the default differs
    # Asked for the same ones, it is accepted too.
    tiny_pipe(inversion=loaded, prompt="a cat", attention_mode="dsta", num_inference_steps=2, output_type="latent")


@pytest.mark.parametrize(
    "kwargs, named",
    [
        (dict(attention_mode="dsta+flatten"), "attention_mode='dsta+flatten' (inverted with 'dsta')"),
        (dict(flatten_variant="II"), "variant='II'"),
        (dict(flatten_levels=(0, 1)), "levels=(0, 1)"),
        (dict(num_inference_steps=4), "num_inference_steps=4 (inverted with 2)"),
        (dict(inject_steps=1), "inject_steps=1 (inverted with 2)"),
        (dict(num_inversion_steps=8), "num_inversion_steps=8"),
    ],
)
def test_editing_an_inversion_with_other_settings_is_a_clear_error(tiny_pipe, source, kwargs, named):
    frames, trajectories, latents = source
    inversion = tiny_pipe.invert_video(
        frames, attention_mode="dsta", flatten_variant="I", **STEPS, inject_steps=2, trajectories=trajectories, latents=latents
    )
    with pytest.raises(ValueError, match="cannot be edited with") as info:
        tiny_pipe(inversion=inversion, prompt="a cat", output_type="latent", **kwargs)
    assert named in str(info.value) and "\n" not in str(info.value)


def test_vae_chunks_shrink_with_the_frame_size():
    from flatten_video.pipelines.codec import vae_chunk_frames

    assert vae_chunk_frames(512, 512) == 8
    assert vae_chunk_frames(1024, 1024) == 2  # SDXL: 44.8 GiB at 8 frames a call, 16.3 at 2
    assert vae_chunk_frames(4096, 4096) == 1
    assert vae_chunk_frames(64, 64) == 512


def test_decode_chunk_size_sets_vae_calls_and_not_the_frames(tiny_pipe, source, monkeypatch):
    frames, _, latents = source
    count = frames.shape[0]
    calls = []
    decode = tiny_pipe.vae.decode

    def counting(sample, *args, **kwargs):
        calls.append(sample.shape[0])
        return decode(sample, *args, **kwargs)

    monkeypatch.setattr(tiny_pipe.vae, "decode", counting)
    whole = tiny_pipe.decode_latents(latents)
    assert calls == [count]  # tiny frames: one call
    calls.clear()
    chunked = tiny_pipe.decode_latents(latents, chunk_size=2)
    assert calls == [2] * (count // 2) + [1] * (count % 2)
    assert torch.allclose(whole, chunked, atol=1e-5)
    with pytest.raises(ValueError, match="decode_chunk_size must be at least 1"):
        edit(tiny_pipe, source, decode_chunk_size=0)


# -- diffusers habits -----------------------------------------------------------------------------


def test_the_call_takes_diffusers_callback_tensor_inputs_and_refuses_unknown_ones(tiny_pipe):
    frames = moving_texture(frames=3, height=64, width=64)
    seen = []
    tiny_pipe(frames, "a cat", num_inference_steps=2, num_inversion_steps=4, inject_steps=1, flow_method="dis",
              output_type="latent", callback_on_step_end=lambda pipe, i, t, kw: seen.append(sorted(kw)) or kw,
              callback_on_step_end_tensor_inputs=["latents"])
    assert seen == [["latents"], ["latents"]]
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs may name latents; got 'prompt_embeds'"):
        tiny_pipe(frames, "a cat", callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"])


@pytest.mark.parametrize("video, message", [
    (torch.full((3, 3, 64, 64), 128.0), r"video values must be in \[0, 1\], got 128..128: divide 0..255 frames by 255"),
    (torch.full((3, 3, 64, 64), -0.5), r"video values must be in \[0, 1\], got -0.5..-0.5"),
    (torch.full((3, 3, 64, 64), float("nan")), "video holds NaN or infinite values"),
])
def test_frames_outside_0_1_are_refused_in_one_line(tiny_pipe, video, message):
    with pytest.raises(ValueError, match=message):
        tiny_pipe(video, "a cat")


def test_vae_slicing_and_tiling_switch_as_in_diffusers(tiny_pipe):
    latents = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    whole = tiny_pipe.decode_latents(latents)
    tiny_pipe.enable_vae_slicing()  # one frame at a time: the same frames
    try:
        assert tiny_pipe.vae.use_slicing
        torch.testing.assert_close(tiny_pipe.decode_latents(latents), whole, atol=1e-5, rtol=1e-5)
    finally:
        tiny_pipe.disable_vae_slicing()
    tiny_pipe.enable_vae_tiling()  # tiles blended at their seams: close to, not equal to, the whole frame
    try:
        assert tiny_pipe.vae.use_tiling and tiny_pipe.decode_latents(latents).shape == whole.shape
    finally:
        tiny_pipe.disable_vae_tiling()
    assert not tiny_pipe.vae.use_slicing and not tiny_pipe.vae.use_tiling


def test_a_list_of_prompts_edits_the_video_once_each_from_one_inversion(tiny_pipe, monkeypatch):
    frames = moving_texture(frames=3, height=64, width=64)
    options = dict(**STEPS, inject_steps=1, flow_method="dis")
    seed = lambda: torch.Generator().manual_seed(0)  # noqa: E731 - the VAE sample and trajectories draw from it
    inversions = []
    original = FlattenPipeline._make_start
    monkeypatch.setattr(FlattenPipeline, "_make_start", lambda *a: inversions.append(1) or original(*a))
    both = tiny_pipe(frames, ["a tiger", "a fox"], output_type="pt", generator=seed(), **options).frames
    assert inversions == [1] and both.shape == (2, 3, 3, 64, 64)
    alone = [tiny_pipe(frames, prompt, output_type="pt", generator=seed(), **options).frames[0]
             for prompt in ("a tiger", "a fox")]
    assert torch.equal(both[0], alone[0]) and torch.equal(both[1], alone[1])
    pil = tiny_pipe(frames, ["a tiger", "a fox"], negative_prompt=["blurry", "dark"], generator=seed(), **options).frames
    assert len(pil) == 2 and all(len(video) == 3 for video in pil)
    with pytest.raises(ValueError, match="2 prompts and 3 negative prompts"):
        tiny_pipe(frames, ["a", "b"], negative_prompt=["x", "y", "z"])
    with pytest.raises(ValueError, match="prompt must be a string or a non-empty list"):
        tiny_pipe(frames, [])


def test_a_loaded_stable_diffusion_pipeline_becomes_a_flatten_one_sharing_its_modules(tiny_sd_path, tiny_pipe):
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    sd = StableDiffusionPipeline.from_pretrained(tiny_sd_path, safety_checker=None, requires_safety_checker=False)
    sd.scheduler = PNDMScheduler.from_config(sd.scheduler.config)  # a sampler FLATTEN does not use
    stock = {name: type(processor) for name, processor in sd.unet.attn_processors.items()}
    frames = moving_texture(frames=3, height=64, width=64)
    options = dict(**STEPS, inject_steps=1, flow_method="dis", output_type="latent")
    expected = tiny_pipe(frames, "a cat", generator=torch.Generator().manual_seed(3), **options).frames
    # Both ways diffusers users make one pipeline from another; the constructor takes the
    # components as they are (PNDM, and a safety checker and feature extractor it does not use).
    for pipe in (FlattenPipeline.from_pipe(sd), FlattenPipeline(**sd.components)):
        assert pipe.unet is sd.unet and pipe.vae is sd.vae and pipe.text_encoder is sd.text_encoder
        assert type(pipe.scheduler).__name__ == "DDIMScheduler"
        assert type(pipe.inverse_scheduler).__name__ == "DDIMInverseScheduler"
        assert set(pipe.components) == set(tiny_pipe.components)  # nothing it does not run is kept
        pipe.set_progress_bar_config(disable=True)
        out = pipe(frames, "a cat", generator=torch.Generator().manual_seed(3), **options).frames
        assert torch.equal(out, expected)  # the same DDIM pair as from_pretrained makes
        assert {name: type(processor) for name, processor in sd.unet.attn_processors.items()} == stock  # stock again
    with pytest.raises(ValueError, match="a FlattenPipeline cannot be made from a .*: it has no unet"):
        FlattenPipeline.from_pipe(sd, unet=None)
