"""ControlNets in the FLATTEN edit and ControlVideo-style editing (docs/architecture.md, Plug-ins), with a tiny random
ControlNet built from the tiny U-Net, offline."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel

from conftest import moving_texture
from flatten_video import cli
from flatten_video.app import runtime
from flatten_video.control_maps import canny_maps
from flatten_video.pipelines.controlnet import FlattenControlNetPipeline
from flatten_video.pipelines.inversion import FlattenInversion
from flatten_video.video import write_video

STEPS = dict(num_inference_steps=2, num_inversion_steps=4, inject_steps=2, flow_method="dis", output_type="latent")


def tiny_controlnet(unet, seed: int) -> ControlNetModel:
    """A ControlNet of the U-Net's layout whose zero convolutions are random, so it steers."""
    torch.manual_seed(seed)
    net = ControlNetModel.from_unet(unet)
    for module in [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]:
        torch.nn.init.normal_(module.weight, std=0.2)
    return net.eval()


@pytest.fixture(scope="module")
def controlnet_path(tmp_path_factory, tiny_pipe) -> pathlib.Path:
    path = tmp_path_factory.mktemp("controlnet") / "tiny-controlnet"
    tiny_controlnet(tiny_pipe.unet, 0).save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def control_pipe(tiny_pipe, controlnet_path):
    pipe = FlattenControlNetPipeline(**tiny_pipe.components, controlnet=ControlNetModel.from_pretrained(controlnet_path))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def clip():
    frames = moving_texture(frames=3, height=64, width=64)
    return frames, canny_maps(frames)


def run(pipe, frames, **kwargs):
    return pipe(frames, "a cat", generator=torch.Generator().manual_seed(0), **STEPS, **kwargs).frames


def test_the_controlnet_steers_and_scale_zero_or_an_empty_window_is_exactly_none(tiny_pipe, control_pipe, clip):
    frames, maps = clip
    plain = run(tiny_pipe, frames)
    assert torch.equal(run(control_pipe, frames, control_image=maps, controlnet_conditioning_scale=0.0), plain)
    assert torch.equal(run(control_pipe, frames, control_image=maps, control_guidance_start=0.0, control_guidance_end=0.0), plain)
    steered = run(control_pipe, frames, control_image=maps)
    assert (steered - plain).abs().max() > 1e-3
    # Half the window: only the first step is steered, which differs from both.
    half = run(control_pipe, frames, control_image=maps, control_guidance_end=0.5)
    assert (half - plain).abs().max() > 1e-4 and (half - steered).abs().max() > 1e-4
    # Steering inversion too changes z_T.
    both = run(control_pipe, frames, control_image=maps, control_inversion=True)
    assert (both - steered).abs().max() > 1e-4


def test_stored_and_recomputed_features_agree_with_a_controlnet(control_pipe, clip):
    frames, maps = clip
    stored = run(control_pipe, frames, control_image=maps, feature_mode="stored", feature_dtype=torch.float32)
    recomputed = run(control_pipe, frames, control_image=maps, feature_mode="recompute")
    assert torch.allclose(stored, recomputed, atol=1e-4, rtol=0)


def test_two_controlnets_work_together(tiny_pipe, clip):
    frames, maps = clip
    pipe = FlattenControlNetPipeline(**tiny_pipe.components, controlnet=[tiny_controlnet(tiny_pipe.unet, 1), tiny_controlnet(tiny_pipe.unet, 2)])
    pipe.set_progress_bar_config(disable=True)
    both = run(pipe, frames, control_image=[maps, 1 - maps], controlnet_conditioning_scale=[1.0, 0.5])
    first_only = run(pipe, frames, control_image=[maps, 1 - maps], controlnet_conditioning_scale=[1.0, 0.0])
    assert (both - first_only).abs().max() > 1e-4
    with pytest.raises(ValueError, match="1 condition video"):
        run(pipe, frames, control_image=maps)


def test_canny_maps_are_opencvs():
    import cv2

    frames = moving_texture(frames=2, height=64, width=96)
    maps = canny_maps(frames, 50, 120)
    frame = (frames[1].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    expected = cv2.Canny(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), 50, 120)
    assert maps.shape == (2, 3, 64, 96)
    assert np.array_equal((maps[1, 0].numpy() * 255).astype(np.uint8), expected) and torch.equal(maps[1, 0], maps[1, 2])


def test_a_controlnet_of_another_family_is_refused(tiny_pipe):
    other = ControlNetModel(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                            cross_attention_dim=48, layers_per_block=1, norm_num_groups=8, attention_head_dim=4,
                            conditioning_embedding_out_channels=(16, 32))
    with pytest.raises(ValueError, match="width 48, the U-Net gives 32"):
        FlattenControlNetPipeline(**tiny_pipe.components, controlnet=other)


# ----------------------------------------------------------------------------- ControlVideo mode


def count_unet_calls(pipe):
    calls = []
    handle = pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls, handle


def test_noise_start_runs_no_inversion_and_identical_frames_stay_identical(control_pipe):
    still = moving_texture(frames=3, height=64, width=64, shift=0)
    calls, handle = count_unet_calls(control_pipe)
    try:
        out = run(control_pipe, still, control_image=canny_maps(still), init="noise", guidance_scale=12.5)
    finally:
        handle.remove()
    assert len(calls) == 2  # the two sampling steps (guidance rows share a call), no inversion
    for t in (1, 2):  # up to float32 rounding of the video-wide sums (1.3e-5 on values near 6 seen with torch 2.14)
        assert torch.allclose(out[:, :, t], out[:, :, 0], atol=1e-4, rtol=0)


def test_noise_start_with_and_without_flatten_differ_on_motion(control_pipe, clip):
    frames, maps = clip
    options = dict(control_image=maps, init="noise", guidance_scale=12.5)
    dsta = run(control_pipe, frames, attention_mode="dsta", **options)
    full = run(control_pipe, frames, attention_mode="dsta+flatten", **options)
    assert (dsta - full).abs().max() > 1e-4


def test_trajectory_noise_is_shared_along_every_trajectory(tiny_pipe, clip):
    frames, _ = clip
    inversion = tiny_pipe.invert_video(frames, init="trajectory-noise", attention_mode="dsta", flow_method="dis",
                                       num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    # A start, not an inversion: nothing inverted, nothing to inject, no trajectories kept for attention.
    assert not isinstance(inversion, FlattenInversion) and inversion.method == "trajectory-noise"
    assert inversion.inject_steps == 0 and inversion.trajectories == {}
    labels = tiny_pipe.prepare_trajectories(frames, flow_method="dis", progress=False,
                                            generator=torch.Generator().manual_seed(0))[(8, 8)].labels
    latents = inversion.latents[0].permute(1, 2, 3, 0).reshape(-1, 4)  # (F*h*w, C)
    flat = labels.reshape(-1)
    for label in flat.unique()[:20].tolist():
        cells = latents[flat == label]
        assert torch.equal(cells, cells[:1].expand_as(cells))
    assert not torch.equal(latents[flat == 0][0], latents[flat == 1][0])


# ----------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("source") / "walk.mp4"
    write_video(moving_texture(frames=5, height=64, width=64, shift=4), path, fps=8)
    return path


def edit_argv(source, output, model, *extra):
    return ["edit", str(source), "--prompt", "a cat", "--model", str(model), "--frames", "3", "--width", "64",
            "--height", "64", "--steps", "2", "--inversion-steps", "4", "--inject-steps", "1", "--flow", "dis",
            "--device", "cpu", "--output", str(output), *extra]


def test_control_and_noise_start_through_the_command_line(source, tiny_sd_path, controlnet_path, tmp_path, capsys):
    output = tmp_path / "controlvideo.mp4"
    argv = edit_argv(source, output, tiny_sd_path, "--control", f"canny={controlnet_path}", "--init", "noise",
                     "--guidance", "12.5", "--control-scale", "0.8")
    # A noise start inverts and injects nothing: the inversion's options are refused, in one line, before loading.
    assert cli.main(argv) == 1
    assert "--inversion-steps is the inversion method's; --method noise does not take it" in capsys.readouterr().err
    for option in ("--inversion-steps", "--inject-steps"):
        del argv[argv.index(option):argv.index(option) + 2]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.strip() == f"wrote {output}"
    # A condition video of the source's length works; one of another length is a clear line, before loading.
    maps = tmp_path / "maps.mp4"
    write_video(canny_maps(moving_texture(frames=5, height=64, width=64, shift=4)), maps, fps=8)
    assert cli.main(edit_argv(source, tmp_path / "b.mp4", tiny_sd_path, "--control", f"canny={controlnet_path}",
                              "--control-video", str(maps))) == 0
    capsys.readouterr()
    short = tmp_path / "short.mp4"
    write_video(canny_maps(moving_texture(frames=4, height=64, width=64)), short, fps=8)
    status = cli.main(edit_argv(source, tmp_path / "c.mp4", tmp_path / "never-loaded", "--control", "canny",
                                "--control-video", str(short)))
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1 and "has 4 frames: give one with the source's 5 frames or the 3 edited ones" in err[0]
    assert not (tmp_path / "c.mp4").exists()


def test_a_family_without_a_default_controlnet_asks_for_one(source, tiny_sd_path, tmp_path, capsys, monkeypatch):
    loads = []
    monkeypatch.setattr(runtime, "load_pipeline", lambda *args: loads.append(args))
    status = cli.main(edit_argv(source, tmp_path / "d.mp4", tiny_sd_path, "--control", "canny"))
    err = capsys.readouterr().err.strip().splitlines()
    assert loads == []  # told before the model loads
    assert status == 1 and err == ["flatten-video: error: no default canny ControlNet for this model (unknown family): "
                                   "name one with --control canny=MODEL"]


@pytest.mark.parametrize("extra, message", [
    (["--control", "sketch"], "unknown --control 'sketch'"),
    (["--control-video", "x.mp4"], "--control-video was given 1 time(s) for 0 --control"),
    (["--control", "canny", "--control-start", "0.8", "--control-end", "0.2"], "must satisfy 0 <= start <= end <= 1"),
    (["--init", "zeros"], "invalid choice"),
])
def test_bad_control_settings_are_one_line(source, tmp_path, capsys, extra, message):
    try:
        status = cli.main(edit_argv(source, tmp_path / "e.mp4", tmp_path / "never-loaded", *extra))
    except SystemExit as exit:  # argparse's own choices
        status = exit.code
    assert status != 0 and message in capsys.readouterr().err


def test_detectors_without_controlnet_aux_are_one_clear_line(monkeypatch):
    import builtins

    from flatten_video.control_maps import DetectorUnavailable, control_maps

    real_import = builtins.__import__

    def no_controlnet_aux(name, *args, **kwargs):
        if name == "controlnet_aux":
            raise ImportError("No module named 'controlnet_aux'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_controlnet_aux)
    with pytest.raises(DetectorUnavailable, match="pip install controlnet-aux") as info:
        control_maps(moving_texture(frames=2, height=64, width=64), "depth")
    assert "\n" not in str(info.value)


def test_the_benchmark_runs_controlvideo_with_a_controlnet(tmp_path, tiny_sd_path, controlnet_path, clip_path):
    """The paper's plug-and-play comparison is bench runs with --init noise --control canny: one item here."""
    import json

    from test_bench import OFFICIAL_ROWS, make_tgve

    data = make_tgve(tmp_path / "tgve", OFFICIAL_ROWS)
    out = tmp_path / "out"
    argv = ["bench", str(data), "-o", str(out), "--model", str(tiny_sd_path), "--frames", "3", "--width", "64",
            "--height", "64", "--steps", "2", "--flow", "dis", "--device", "cpu", "--dtype", "float32",
            "--init", "noise", "--control", f"canny={controlnet_path}", "--guidance", "12.5", "--ablation", "dsta",
            "--limit", "1", "--clip-model", clip_path, "--no-pick-score"]
    assert cli.main(argv) == 0
    record = json.loads((out / "dsta" / "items/DAVIS_480p/dog/style.json").read_text())
    assert record["settings"]["method"] == "noise" and record["settings"]["control"] == [f"canny={controlnet_path}"]
    assert record["settings"]["attention"] == "dsta" and record["scores"]["clip_t"] is not None
