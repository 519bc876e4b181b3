"""Trajectory sampling: vectorised vs the per-cell loop reference of the tests, side by side.

Case of the issue: 32 frames at 512x512, grids 64, 32, 16 and 8.
Run: python benchmarks/trajectories.py
"""

import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from common import best_time, machine, smooth_flows  # noqa: E402
from test_trajectories import reference_labels  # noqa: E402

from flatten_video import sample_trajectories  # noqa: E402

PAPER_CODE_SECONDS = 14.0  # the paper's released sample_trajectories on this machine (issue #2)
GRIDS = [(64, 64), (32, 32), (16, 16), (8, 8)]


def main() -> None:
    flows = smooth_flows(32, 512, 512)
    def ours_all():
        return [sample_trajectories(flows, g, torch.Generator().manual_seed(0)) for g in GRIDS]

    ours = best_time(ours_all)
    # Each step works on a few thousand cells, where a busy machine makes threads wait on one
    # another; one thread shows the work itself.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ours_one_thread = best_time(ours_all)
    torch.set_num_threads(threads)
    start = time.perf_counter()
    for grid in GRIDS:
        reference_labels(flows, grid, torch.Generator().manual_seed(0))
    loop = time.perf_counter() - start
    print(f"machine: {machine()}")
    print(f"trajectories, 32 frames 512x512, grids 64/32/16/8")
    print(f"  ours (vectorised)      {ours * 1000:9.1f} ms")
    print(f"  ours, 1 thread         {ours_one_thread * 1000:9.1f} ms")
    print(f"  per-cell loop ref      {loop * 1000:9.1f} ms   -> ours is {loop / ours:6.1f}x faster "
          f"({loop / ours_one_thread:.0f}x on 1 thread)")
    print(f"  paper's code (~14 s)   {PAPER_CODE_SECONDS * 1000:9.1f} ms   -> ours is {PAPER_CODE_SECONDS / ours:6.0f}x faster "
          f"({PAPER_CODE_SECONDS / ours_one_thread:.0f}x on 1 thread)")


if __name__ == "__main__":
    main()
