"""Flow-guided attention vs the dense spatio-temporal attention it follows, side by side, and
flow-guided attention under each SDPA backend, checked against the math kernel in float32.

Default case: 2 x 16 frames x 32x32 tokens, 320 channels, 5 heads, on the CPU.
Run: python benchmarks/attention.py
     python benchmarks/attention.py --device cuda --dtype float16 --frames 32 --size 64 64 \\
         --backends default flash efficient cudnn        (SD at 512x512, the finest level)
"""

import argparse
import contextlib
import time

import torch

from common import machine, smooth_flows
from flatten_video import flow_guided_attention, sample_trajectories
from flatten_video.ops import multihead_attention

VIDEOS, CHANNELS, HEADS = 2, 320, 5


def best_time(fn, device: str, repeats: int = 5) -> float:
    """Best wall time of ``repeats`` calls after one warm-up, synchronized on CUDA."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    fn()
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def backend(name: str):
    if name == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(dict(flash=SDPBackend.FLASH_ATTENTION, efficient=SDPBackend.EFFICIENT_ATTENTION,
                            cudnn=SDPBackend.CUDNN_ATTENTION, math=SDPBackend.MATH)[name])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, nargs=2, default=(32, 32), metavar=("H", "W"), help="latent tokens per frame")
    parser.add_argument("--backends", nargs="+", default=["default"], choices=("default", "math", "flash", "efficient", "cudnn"))
    args = parser.parse_args()
    torch.manual_seed(0)
    dtype, device, frames, size = getattr(torch, args.dtype), args.device, args.frames, tuple(args.size)
    tokens = size[0] * size[1]
    trajectories = sample_trajectories(smooth_flows(frames, size[0] * 8, size[1] * 8), size).to(device)
    q, k, v = torch.randn(3, VIDEOS * frames, tokens, CHANNELS, device=device, dtype=dtype)
    hidden = torch.randn(VIDEOS, frames * tokens, CHANNELS, device=device, dtype=dtype)
    lengths = [g.shape[1] for g in trajectories.groups]
    print(f"machine: {machine()}, {device}, {args.dtype}")
    print(f"{VIDEOS} x {frames} frames x {size[0]}x{size[1]} tokens, {CHANNELS} channels, {HEADS} heads; "
          f"{trajectories.num_trajectories} trajectories, longest {max(lengths)}")
    with torch.no_grad():
        dense = best_time(lambda: multihead_attention(q, k, v, HEADS, frames), device)
        print(f"  dense spatio-temporal attention       {dense * 1000:9.2f} ms")
        with backend("math"):
            exact = flow_guided_attention(hidden.float(), trajectories, HEADS)
        for name in args.backends:
            try:
                with backend(name):
                    seconds = best_time(lambda: flow_guided_attention(hidden, trajectories, HEADS), device)
                    error = (flow_guided_attention(hidden, trajectories, HEADS).float() - exact).abs().max().item()
            except RuntimeError as failure:
                print(f"  flow-guided attention, {name:>9}: failed: {str(failure).splitlines()[0]}")
                continue
            print(f"  flow-guided attention, {name:>9}  {seconds * 1000:9.2f} ms = {100 * seconds / dense:6.2f}% of DSTA; "
                  f"max |error| vs float32 math {error:.1e}")


if __name__ == "__main__":
    main()
