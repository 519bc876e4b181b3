"""Trajectory sampling: vectorised vs the per-cell loop reference of the tests, side by side.

Case of the issue: 32 frames at 512x512, grids 64, 32, 16 and 8.
Run: python benchmarks/trajectories.py
"""

import pathlib
import statistics
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from common import machine, smooth_flows  # noqa: E402
from test_trajectories import reference_labels  # noqa: E402

from flatten_video import sample_trajectories, sample_trajectory_pyramid  # noqa: E402

PAPER_CODE_SECONDS = 14.0  # the paper's released sample_trajectories on this machine (issue #2)
GRIDS = [(64, 64), (32, 32), (16, 16), (8, 8)]
RUNS = 30


def times(fn, runs: int) -> list[float]:
    result = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        result.append(time.perf_counter() - start)
    return result


def main() -> None:
    flows = smooth_flows(32, 512, 512)

    def pyramid():  # what the pipeline calls: one read of the flow for the four grids
        return sample_trajectory_pyramid(flows, GRIDS, torch.Generator().manual_seed(0))

    def separate():
        return [sample_trajectories(flows, g, torch.Generator().manual_seed(0)) for g in GRIDS]

    pyramid(), separate()  # warm up
    threads = torch.get_num_threads()
    rows = [(f"pyramid, {threads} threads", times(pyramid, RUNS)), (f"4 calls, {threads} threads", times(separate, RUNS))]
    if threads > 1:
        torch.set_num_threads(1)
        rows += [("pyramid, 1 thread", times(pyramid, RUNS)), ("4 calls, 1 thread", times(separate, RUNS))]
        torch.set_num_threads(threads)
    loop = times(lambda: [reference_labels(flows, g, torch.Generator().manual_seed(0)) for g in GRIDS], 1)[0]
    print(f"machine: {machine()}")
    print(f"trajectories, 32 frames 512x512, grids 64/32/16/8; best and median of {RUNS} runs")
    for name, runs in rows:
        best, median = min(runs), statistics.median(runs)
        print(f"  {name:20s} best {best * 1e3:6.1f} ms  median {median * 1e3:6.1f} ms   "
              f"vs loop ref {loop / best:4.0f}x (median {loop / median:4.0f}x)   "
              f"vs paper's ~14 s {PAPER_CODE_SECONDS / best:5.0f}x (median {PAPER_CODE_SECONDS / median:4.0f}x)")
    print(f"  per-cell loop ref    {loop * 1e3:7.1f} ms (one run, same process)")


if __name__ == "__main__":
    main()
