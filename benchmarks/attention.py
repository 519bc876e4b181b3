"""Flow-guided attention vs the dense spatio-temporal attention it follows, side by side.

Case of the issue: 2 x 16 frames x 32x32 tokens, 320 channels, 5 heads.
Run: python benchmarks/attention.py
"""

import torch

from common import best_time, machine, smooth_flows
from flatten_video import flow_guided_attention, sample_trajectories
from flatten_video.ops import multihead_attention

VIDEOS, FRAMES, SIZE, CHANNELS, HEADS = 2, 16, (32, 32), 320, 5


def main() -> None:
    torch.manual_seed(0)
    tokens = SIZE[0] * SIZE[1]
    trajectories = sample_trajectories(smooth_flows(FRAMES, SIZE[0] * 8, SIZE[1] * 8), SIZE)
    q, k, v = torch.randn(3, VIDEOS * FRAMES, tokens, CHANNELS)
    hidden = torch.randn(VIDEOS, FRAMES * tokens, CHANNELS)
    with torch.no_grad():
        dense = best_time(lambda: multihead_attention(q, k, v, HEADS, FRAMES))
        flow = best_time(lambda: flow_guided_attention(hidden, trajectories, HEADS), repeats=5)
    lengths = [g.shape[1] for g in trajectories.groups]
    print(f"machine: {machine()}")
    print(f"{VIDEOS} x {FRAMES} frames x {SIZE[0]}x{SIZE[1]} tokens, {CHANNELS} channels, {HEADS} heads; "
          f"{trajectories.num_trajectories} trajectories, longest {max(lengths)}")
    print(f"  dense spatio-temporal attention  {dense * 1000:9.1f} ms")
    print(f"  flow-guided attention            {flow * 1000:9.1f} ms   = {100 * flow / dense:5.2f}% of DSTA")


if __name__ == "__main__":
    main()
