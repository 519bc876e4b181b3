"""Long clips: one denoising step, the exact method vs co-denoising windows, side by side.

The tiny random Stable Diffusion of tests/data/reference-cases (the cost's shape in frames does not
depend on the weights), frames of 128x128 px (16x16 latents), DSTA + FLATTEN on the latent grid,
one U-Net evaluation of one video at t=501 (an inversion step; sampling runs 2 or 3 such rows).
Windows of 32 frames overlapping by 8, with 2 anchors. For each clip length it prints the time per
frame, the peak of the tensors alive during the step (an exact account of every tensor's bytes,
:class:`common.LiveBytes`) and the process's peak resident memory above the start (which the
allocator's caching blurs), the U-Net frame-passes and the self-attention FLOPs.

Each measurement runs in a fresh process, so one's freed memory cannot hide the next one's peak.

Run: python benchmarks/long_clips.py [--frames 32 64 128 256] [--exact-up-to 256]
"""

import argparse
import json
import pathlib
import subprocess
import sys
import time

import torch

from common import AttentionFlops, LiveBytes, PeakMemory, machine, smooth_flows
from flatten_video import FlattenConfig, FlattenPipeline, sample_trajectories
from flatten_video.pipelines import Conditioning
from flatten_video.pipelines.windowing import denoise, plan_runs

TINY_SD = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data" / "reference-cases" / "tiny-sd"
SIZE = 128


def step(pipe, config: FlattenConfig, frames: int) -> dict:
    torch.manual_seed(0)
    grid = (SIZE // 8, SIZE // 8)
    latents = torch.randn(1, 4, frames, *grid)
    trajectories = {grid: sample_trajectories(smooth_flows(frames, SIZE, SIZE), grid, torch.Generator().manual_seed(0))}
    conditioning = Conditioning(pipe.encode_prompt(""))
    runs = plan_runs(config, frames, trajectories, "cpu")
    passes = sum(len(run.inputs) for run in runs)
    with pipe.flatten_enabled(config, frames, trajectories) as context, torch.no_grad():
        with AttentionFlops() as flops, PeakMemory() as memory:
            start = time.perf_counter()
            denoise(pipe.predict_noise, context, runs, latents, 501, conditioning, lambda run, rows: _null())
            seconds = time.perf_counter() - start
        with LiveBytes() as tensors:  # again, counting every tensor: exact, but too slow to time
            denoise(pipe.predict_noise, context, runs, latents, 501, conditioning, lambda run, rows: _null())
    return dict(seconds=seconds, peak=memory.peak, tensors=tensors.peak, passes=passes, flops=flops.total, windows=len(runs))


def _null():
    import contextlib

    return contextlib.nullcontext()


def measure(frames: int, window: int) -> dict:
    """One step in this process (the child's side of :func:`main`)."""
    pipe = FlattenPipeline.from_pretrained(TINY_SD)
    pipe.set_progress_bar_config(disable=True)
    step(pipe, FlattenConfig(window=32), 8)  # warm-up: first-call allocations and kernel choices
    return step(pipe, FlattenConfig(window=window, overlap=8, anchors=2), frames)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--exact-up-to", type=int, default=256, help="skip the exact method above this many frames")
    parser.add_argument("--one", type=int, nargs=2, metavar=("FRAMES", "WINDOW"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one)))
        return
    print(f"machine: {machine()}")
    print(f"tiny SD, {SIZE}x{SIZE} px, one U-Net evaluation of one video; windows W=32 O=8 A=2")
    print(f"{'frames':>6} {'method':>9} {'windows':>7} {'s/frame':>9} {'tensors MiB':>12} {'RSS MiB':>8} {'passes':>7} {'attn GFLOP':>11}")
    for frames in args.frames:
        methods = [("windowed", 32)]
        if frames <= args.exact_up_to:
            methods.insert(0, ("exact", 0))
        for name, window in methods:
            child = subprocess.run([sys.executable, __file__, "--one", str(frames), str(window)],
                                   capture_output=True, text=True, check=True)
            r = json.loads(child.stdout.strip().splitlines()[-1])
            print(f"{frames:>6} {name:>9} {r['windows']:>7} {r['seconds'] / frames * 1000:>7.1f}ms "
                  f"{r['tensors'] / 2**20:>12.1f} {r['peak'] / 2**20:>8.1f} {r['passes']:>7} {r['flops'] / 1e9:>11.2f}", flush=True)


if __name__ == "__main__":
    main()
