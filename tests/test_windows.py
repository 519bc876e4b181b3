"""Long clips in co-denoising windows (docs/architecture.md, Long clips): the plan, clip-wide trajectories seen from a
window, anchors, features per window, several processes, and the command line."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest
import torch

from conftest import moving_texture
from flatten_video import FlattenConfig
from flatten_video.pipelines import Conditioning, FlattenInversion
from flatten_video.pipelines.windowing import denoise, plan_runs, process_share
from flatten_video.trajectories import sample_trajectories
from flatten_video.windows import anchor_frames, plan_windows

STEPS = dict(num_inference_steps=2, num_inversion_steps=4, inject_steps=2)


# ----------------------------------------------------------------------------- the plan


@pytest.mark.parametrize("frames, window, overlap", [
    (33, 32, 8), (40, 32, 31), (96, 16, 8), (100, 32, 8), (7, 2, 1), (9, 3, 0), (257, 32, 8), (64, 32, 0), (5, 4, 3),
])
def test_every_frame_is_covered_and_its_weights_sum_to_one(frames, window, overlap):
    plan = plan_windows(frames, window, overlap, anchors=2)
    total = torch.zeros(frames, dtype=torch.float64)
    for w in plan:
        assert len(w.frames) == window and torch.equal(w.frames, torch.arange(int(w.frames[0]), int(w.frames[0]) + window))
        assert (w.weights > 0).all()
        total[w.frames] += w.weights
        assert not set(w.anchors.tolist()) & set(w.frames.tolist())  # anchors only where the window lacks them
    assert torch.allclose(total, torch.ones(frames, dtype=torch.float64), atol=1e-12)
    assert int(plan[0].frames[0]) == 0 and int(plan[-1].frames[-1]) == frames - 1
    starts = [int(w.frames[0]) for w in plan]
    assert all(b - a == window - overlap for a, b in zip(starts[:-2], starts[1:-1]))  # the last one ends at the end


def test_weights_fall_off_linearly_inside_the_overlap():
    middle = plan_windows(40, 8, 3, anchors=0)[1]  # frames 5..12, overlaps of 3 on both sides
    # Its ramp 1/4, 2/4, 3/4 meets the previous window's 3/4, 2/4, 1/4: shares of a quarter to three quarters.
    assert middle.weights.tolist() == pytest.approx([0.25, 0.5, 0.75, 1, 1, 0.75, 0.5, 0.25])
    first = plan_windows(40, 8, 3, anchors=0)[0]
    assert first.weights.tolist() == pytest.approx([1, 1, 1, 1, 1, 0.75, 0.5, 0.25])


def test_short_clips_and_window_zero_are_one_window_without_anchors():
    for window in (0, 10, 32):
        (only,) = plan_windows(10, window, 8 if window > 8 else 0, anchors=2)
        assert torch.equal(only.frames, torch.arange(10)) and len(only.anchors) == 0 and (only.weights == 1).all()


def test_anchors_are_spread_over_the_clip():
    assert anchor_frames(96, 2).tolist() == [0, 95]
    assert anchor_frames(97, 3).tolist() == [0, 48, 96]
    assert anchor_frames(10, 0).tolist() == []


@pytest.mark.parametrize("window, overlap, anchors, message", [
    (8, 8, 2, "overlap must be smaller than window"),
    (8, 9, 2, "overlap must be smaller than window"),
    (1, 0, 2, "window must be at least 2"),
    (-1, 0, 2, "window must be at least 2"),
    (8, -1, 2, "overlap must be at least 0"),
    (8, 2, -1, "anchors must be at least 0"),
])
def test_bad_window_settings_are_clear_errors(window, overlap, anchors, message):
    with pytest.raises(ValueError, match=message):
        plan_windows(40, window, overlap, anchors)
    with pytest.raises(ValueError, match=message):
        FlattenConfig(window=window, overlap=overlap, anchors=anchors)


def test_more_anchors_than_frames_is_a_clear_error():
    with pytest.raises(ValueError, match="anchors"):
        plan_windows(5, 2, 1, anchors=6)


# ----------------------------------------------------------------------------- trajectories seen from a window


def reference_groups(labels: torch.Tensor) -> set[tuple[int, ...]]:
    """Token index tuples of every label with two or more tokens, frame-major: a plain loop."""
    tokens: dict[int, list[int]] = {}
    for index, label in enumerate(labels.reshape(-1).tolist()):
        tokens.setdefault(label, []).append(index)
    return {tuple(t) for t in tokens.values() if len(t) >= 2}


def test_a_window_sees_the_clip_wide_trajectories_of_its_frames():
    flows = torch.randn(11, 2, 32, 48) * 6
    clip = sample_trajectories(flows, (8, 12), torch.Generator().manual_seed(3))
    frames = torch.tensor([4, 5, 6, 7, 0, 11])  # a window and two anchors
    seen = clip.select(frames)
    expected_labels = clip.labels[frames]
    # Two tokens share a trajectory exactly when they did in the clip.
    flat_seen, flat_clip = seen.labels.reshape(-1), expected_labels.reshape(-1)
    assert torch.equal(flat_seen[:, None] == flat_seen[None], flat_clip[:, None] == flat_clip[None])
    assert {tuple(row.tolist()) for g in seen.groups for row in g} == reference_groups(seen.labels)
    whole = clip.select(torch.arange(12))
    assert torch.equal(whole.labels, clip.labels) and all(torch.equal(a, b) for a, b in zip(whole.groups, clip.groups))


# ----------------------------------------------------------------------------- one windowed evaluation


@pytest.fixture(scope="module")
def evaluation(tiny_pipe):
    """A denoising evaluation of 12 random 8x8 latent frames with FLATTEN on the tiny U-Net."""
    torch.manual_seed(0)
    latents = torch.randn(1, 4, 12, 8, 8)
    trajectories = {(8, 8): sample_trajectories(torch.randn(11, 2, 64, 64) * 8, (8, 8), torch.Generator().manual_seed(0))}
    conditioning = Conditioning(torch.randn(1, 77, 32))

    def run(latents, config):
        runs = plan_runs(config, latents.shape[2], trajectories, "cpu")
        with tiny_pipe.flatten_enabled(config, latents.shape[2], trajectories) as context, torch.no_grad():
            return denoise(tiny_pipe.predict_noise, context, runs, latents, 301, conditioning, lambda run, rows: _null())

    def whole_as_window(latents):
        """The window loop itself, given one window that is the whole clip."""
        config = FlattenConfig(window=0)
        (run,) = plan_runs(config, 12, trajectories, "cpu")
        forced = dataclasses.replace(run, whole=False, trajectories={g: t.select(torch.arange(12)) for g, t in trajectories.items()})
        with tiny_pipe.flatten_enabled(config, 12, trajectories) as context, torch.no_grad():
            return denoise(tiny_pipe.predict_noise, context, [forced], latents, 301, conditioning, lambda run, rows: _null())

    return latents, run, whole_as_window


def _null():
    import contextlib

    return contextlib.nullcontext()


def test_the_window_loop_over_one_whole_clip_window_is_the_exact_method(evaluation):
    latents, run, whole_as_window = evaluation
    exact = run(latents, FlattenConfig(window=0))
    assert torch.equal(whole_as_window(latents), exact)
    assert torch.equal(run(latents, FlattenConfig(window=12)), exact)


def test_anchors_carry_far_frames_into_every_window(evaluation):
    latents, run, _ = evaluation
    changed = latents.clone()
    changed[:, :, 11] += 1.0  # an anchor frame (the clip's last)
    far = slice(0, 5)  # frames 0..4: only windows 0..3 and 2..5 hold them (W=4, O=1), neither holds frame 11
    with_anchors = FlattenConfig(window=4, overlap=1, anchors=2)
    assert (run(changed, with_anchors)[:, :, far] - run(latents, with_anchors)[:, :, far]).abs().max() > 1e-4
    without = FlattenConfig(window=4, overlap=1, anchors=0)
    assert torch.equal(run(changed, without)[:, :, far], run(latents, without)[:, :, far])


def test_more_processes_than_windows_is_a_clear_error(evaluation, monkeypatch):
    runs = plan_runs(FlattenConfig(window=6, overlap=2, anchors=2), 12, {}, "cpu")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: len(runs) + 1)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 0)
    with pytest.raises(ValueError, match=f"{len(runs) + 1} processes but only {len(runs)} window"):
        process_share(runs)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    assert [r.index for r in process_share(runs)[0]] == list(range(0, len(runs), 2))


# ----------------------------------------------------------------------------- whole edits


def edit(pipe, frames, **kwargs):
    options = dict(STEPS, flow_method="dis", output_type="latent", generator=torch.Generator().manual_seed(0))
    options.update(kwargs)
    return pipe(frames, "a cat", **options).frames


def test_a_still_clip_gives_identical_frames_across_window_edges(tiny_pipe):
    still = moving_texture(frames=10, height=64, width=64, shift=0)
    # One VAE sample for all frames: the posterior's noise would otherwise differ from frame to frame.
    latents = tiny_pipe.encode_video(still[:1], torch.Generator().manual_seed(0)).repeat(1, 1, 10, 1, 1)
    out = edit(tiny_pipe, still, latents=latents, window=4, overlap=1, anchors=2, feature_mode="recompute")
    for t in range(1, 10):
        assert torch.allclose(out[:, :, t], out[:, :, 0], atol=1e-4, rtol=0), t


def test_stored_and_recomputed_features_give_the_same_windowed_edit(tiny_pipe):
    frames = moving_texture(frames=10, height=64, width=64, shift=3)
    window = dict(window=4, overlap=1, anchors=2)
    stored = edit(tiny_pipe, frames, feature_mode="stored", feature_dtype=torch.float32, **window)
    recomputed = edit(tiny_pipe, frames, feature_mode="recompute", **window)
    exact = edit(tiny_pipe, frames, feature_mode="recompute", window=0)
    assert torch.allclose(stored, recomputed, atol=1e-4, rtol=0)
    assert (recomputed - exact).abs().max() > 1e-3  # windows are not the exact method on a moving clip


def test_features_are_kept_per_window_and_auto_mode_counts_them_all(tiny_pipe):
    frames = moving_texture(frames=10, height=64, width=64, shift=3)
    trajectories = tiny_pipe.prepare_trajectories(frames, flow_method="dis", progress=False)
    latents = tiny_pipe.encode_video(frames, torch.Generator().manual_seed(0))
    config = FlattenConfig(window=4, overlap=1, anchors=2)
    stored = tiny_pipe.invert(latents, trajectories, config=config, **STEPS, feature_mode="stored")
    windows = len(plan_windows(10, 4, 1, 2))
    assert sorted(stored.features.features) == sorted((t, k) for t in stored.injected_timesteps for k in range(windows))
    at_budget = tiny_pipe.invert(latents, trajectories, config=config, **STEPS, feature_memory_budget=stored.held_bytes)
    assert at_budget.feature_mode == "stored"
    over = tiny_pipe.invert(latents, trajectories, config=config, **STEPS, feature_memory_budget=stored.held_bytes - 1)
    assert over.feature_mode == "recompute"


def test_an_inversion_made_with_other_windows_is_refused(tiny_pipe, tmp_path):
    frames = moving_texture(frames=6, height=64, width=64, shift=3)
    inversion = tiny_pipe.invert_video(frames, window=4, overlap=1, flow_method="dis", **STEPS)
    loaded = FlattenInversion.load(inversion.save(tmp_path / "inv.safetensors"))
    assert (loaded.config.window, loaded.config.overlap, loaded.config.anchors) == (4, 1, 2)
    with pytest.raises(ValueError, match=r"window=8 \(inverted with 4\)"):
        tiny_pipe(inversion=loaded, prompt="a cat", window=8, output_type="latent")


# ----------------------------------------------------------------------------- several processes


def _edit_in_process(rank: int, world: int, init_file: str, model: str, out: str) -> None:
    """One of ``world`` gloo processes editing the same clip; rank 0 saves the latents."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from flatten_video import FlattenPipeline

        pipe = FlattenPipeline.from_pretrained(model)
        pipe.set_progress_bar_config(disable=True)
        latents = edit(pipe, moving_texture(frames=10, height=64, width=64, shift=3), window=4, overlap=1, anchors=2,
                       feature_mode="stored", feature_dtype=torch.float32)
        if rank == 0:
            torch.save(latents, out)
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_share_the_windows_and_give_the_one_process_result(tiny_sd_path, tiny_pipe, tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "latents.pt"
    mp.spawn(_edit_in_process, args=(2, str(tmp_path / "init"), str(tiny_sd_path), str(out)), nprocs=2, join=True)
    alone = edit(tiny_pipe, moving_texture(frames=10, height=64, width=64, shift=3), window=4, overlap=1, anchors=2,
                 feature_mode="stored", feature_dtype=torch.float32)
    # Summing the windows in another order moves float rounding; guidance 10 amplifies it.
    assert torch.allclose(torch.load(out), alone, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> pathlib.Path:
    from flatten_video.video import write_video

    path = tmp_path_factory.mktemp("long") / "long.mp4"
    write_video(moving_texture(frames=96, height=64, width=64, shift=1), path, fps=24)
    return path


def test_a_96_frame_clip_edits_through_the_command_line_in_windows(long_clip, tiny_sd_path, tmp_path, capsys):
    import av

    from flatten_video import cli

    output = tmp_path / "long-edit.mp4"
    argv = ["edit", str(long_clip), "--prompt", "a cat", "--model", str(tiny_sd_path), "--frames", "96", "--window", "16",
            "--width", "64", "--height", "64", "--steps", "2", "--inversion-steps", "4", "--inject-steps", "1",
            "--flow", "dis", "--device", "cpu", "--output", str(output)]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.strip() == f"wrote {output}"
    with av.open(str(output)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 96


@pytest.mark.parametrize("extra, message", [
    (["--window", "16", "--overlap", "16"], "--overlap must be smaller than --window (16), got 16"),
    (["--window", "1"], "--window must be at least 2, got 1"),
    (["--window", "16", "--anchors", "200"], "--anchors (200) must not exceed the clip's 96 frames"),
    (["--anchors", "-1"], "--anchors must be at least 0, got -1"),
])
def test_window_settings_that_do_not_fit_are_one_line_and_write_nothing(long_clip, tmp_path, capsys, extra, message):
    from flatten_video import cli

    output = tmp_path / "edit.mp4"
    argv = ["edit", str(long_clip), "--prompt", "a cat", "--model", str(tmp_path / "never-loaded"), "--frames", "96",
            "--output", str(output), *extra]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"flatten-video: error: {message}"] and not output.exists()
