"""Trajectory sampling against a per-cell loop reference, and the rules of docs/architecture.md, The method, step 3."""

import pytest
import torch

from flatten_video.trajectories import Trajectories, grid_flow, sample_trajectories, sample_trajectory_pyramid


def reference_labels(flows: torch.Tensor, size, generator: torch.Generator) -> torch.Tensor:
    """Obviously-correct per-cell version of docs/architecture.md, The method, step 3.

    Draws the same random priorities as the library (a permutation over the source cells,
    numbered video-wide) and lets the highest-priority source of every target continue.
    """
    h, w = size
    steps = grid_flow(flows, size)
    frames = len(steps) + 1
    labels = [[[-1] * w for _ in range(h)] for _ in range(frames)]
    priority = torch.randperm((frames - 1) * h * w, generator=generator).tolist()
    next_id = 0
    for y in range(h):
        for x in range(w):
            labels[0][y][x] = next_id
            next_id += 1
    for t in range(frames - 1):
        best = {}
        for y in range(h):
            for x in range(w):
                ty, tx = y + int(steps[t, 1, y, x]), x + int(steps[t, 0, y, x])
                if 0 <= ty < h and 0 <= tx < w:
                    if (ty, tx) not in best or priority[(t * h + y) * w + x] > best[(ty, tx)][0]:
                        best[(ty, tx)] = (priority[(t * h + y) * w + x], y, x)
        for (ty, tx), (_, y, x) in best.items():
            labels[t + 1][ty][tx] = labels[t][y][x]
        for y in range(h):
            for x in range(w):
                if labels[t + 1][y][x] < 0:
                    labels[t + 1][y][x] = next_id
                    next_id += 1
    return torch.tensor(labels)


def random_flows(frames=5, height=48, width=80, scale=12.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(frames - 1, 2, 3, 5, generator=generator) * scale
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)


def cells_of(trajectories: Trajectories):
    """{id: [(t, y, x), ...] in frame order}."""
    result = {}
    frames, h, w = trajectories.labels.shape
    for t in range(frames):
        for y in range(h):
            for x in range(w):
                result.setdefault(int(trajectories.labels[t, y, x]), []).append((t, y, x))
    return result


@pytest.mark.parametrize("size", [(6, 10), (12, 20), (5, 7)])
def test_matches_per_cell_reference(size):
    flows = random_flows()
    ours = sample_trajectories(flows, size, torch.Generator().manual_seed(3))
    reference = Trajectories.from_labels(reference_labels(flows, size, torch.Generator().manual_seed(3)))
    assert torch.equal(ours.labels, reference.labels)


def test_rules_hold():
    flows = random_flows(frames=6)
    size = (12, 20)
    trajectories = sample_trajectories(flows, size, torch.Generator().manual_seed(1))
    steps = grid_flow(flows, size)
    frames, h, w = trajectories.labels.shape
    assert (frames, h, w) == (6, 12, 20)
    ids = torch.unique(trajectories.labels)
    assert torch.equal(ids, torch.arange(len(ids)))  # a partition with ids 0..N-1
    trajectory_cells = cells_of(trajectories)
    assert sum(len(c) for c in trajectory_cells.values()) == frames * h * w
    for cells in trajectory_cells.values():
        for (t0, y0, x0), (t1, y1, x1) in zip(cells, cells[1:]):
            assert t1 == t0 + 1  # one cell per frame, consecutive frames
            assert (y1, x1) == (y0 + int(steps[t0, 1, y0, x0]), x0 + int(steps[t0, 0, y0, x0]))  # follows the flow
    # Every target cell that some source points to is continued by exactly one trajectory.
    for t in range(frames - 1):
        reached = set()
        for y in range(h):
            for x in range(w):
                ty, tx = y + int(steps[t, 1, y, x]), x + int(steps[t, 0, y, x])
                if 0 <= ty < h and 0 <= tx < w:
                    reached.add((ty, tx))
        continued = {
            (y, x)
            for y in range(h)
            for x in range(w)
            if (trajectories.labels[t + 1, y, x] == trajectories.labels[t]).any()
        }
        assert continued == reached


@pytest.mark.parametrize("frames", [2, 17, 33])
def test_still_video_gives_one_trajectory_per_cell_through_all_frames(frames):
    # The longest possible chains: pointer jumping must reach back over all F - 1 links.
    trajectories = sample_trajectories(torch.zeros(frames - 1, 2, 8, 12), (4, 6))
    assert torch.equal(trajectories.labels, torch.arange(24).view(1, 4, 6).expand(frames, 4, 6))
    (group,) = trajectories.groups
    assert group.shape == (24, frames)


@pytest.mark.parametrize(
    "flow_size, sizes",
    [
        ((48, 80), [(12, 20), (6, 10), (3, 5)]),  # nested: picked from the finest grid
        ((48, 80), [(6, 10), (12, 20), (5, 7)]),  # finest not first, and a grid that does not nest
        ((50, 70), [(12, 16), (6, 8)]),  # the finest grid does not divide the flow
    ],
)
def test_pyramid_equals_one_call_per_grid(flow_size, sizes):
    flows = random_flows(height=flow_size[0], width=flow_size[1], scale=20.0)
    pyramid = sample_trajectory_pyramid(flows, sizes, torch.Generator().manual_seed(4))
    generator = torch.Generator().manual_seed(4)
    assert list(pyramid) == sizes
    for size in sizes:
        one = sample_trajectories(flows, size, generator)
        assert torch.equal(pyramid[size].labels, one.labels)
        assert all(torch.equal(a, b) for a, b in zip(pyramid[size].groups, one.groups, strict=True))


def test_pyramid_checks_every_size():
    with pytest.raises(ValueError, match="larger"):
        sample_trajectory_pyramid(torch.zeros(2, 2, 8, 8), [(4, 4), (16, 4)])


def test_same_seed_same_trajectories_and_seed_matters():
    flows = random_flows(scale=20.0)
    first = sample_trajectories(flows, (12, 20), torch.Generator().manual_seed(7))
    again = sample_trajectories(flows, (12, 20), torch.Generator().manual_seed(7))
    other = sample_trajectories(flows, (12, 20), torch.Generator().manual_seed(8))
    assert torch.equal(first.labels, again.labels)
    assert not torch.equal(first.labels, other.labels)


def test_conflicts_are_resolved_uniformly():
    # Two cells of a 1x3 grid point to the middle cell: each should win about half the time.
    flows = torch.zeros(1, 2, 1, 3)
    flows[0, 0, 0, 0] = 1.0
    flows[0, 0, 0, 2] = -1.0
    flows[0, 0, 0, 1] = 5.0  # leaves the grid
    wins = 0
    trials = 400
    generator = torch.Generator().manual_seed(0)
    for _ in range(trials):
        labels = sample_trajectories(flows, (1, 3), generator).labels
        wins += int(labels[1, 0, 1] == labels[0, 0, 0])
        assert labels[1, 0, 1] in (labels[0, 0, 0], labels[0, 0, 2])
    assert 0.4 < wins / trials < 0.6


def test_flow_is_scaled_into_grid_cells():
    flows = torch.zeros(1, 2, 64, 96)
    flows[:, 0] = 16.0  # 16 px right at 96 px wide -> 2 cells at 12 wide
    flows[:, 1] = -8.0  # 8 px up at 64 px high -> 1 cell at 8 high
    steps = grid_flow(flows, (8, 12))
    assert torch.all(steps[:, 0] == 2) and torch.all(steps[:, 1] == -1)
    labels = sample_trajectories(flows, (8, 12)).labels
    assert labels[1, 0, 5] == labels[0, 1, 3]


@pytest.mark.parametrize("size", [(6, 10), (5, 7), (48, 80)])
def test_grid_flow_is_nearest_resize_then_rounding(size):
    flows = random_flows()
    expected = torch.nn.functional.interpolate(flows, size=size, mode="nearest")
    expected = torch.round(expected * torch.tensor([size[1] / 80, size[0] / 48]).view(1, 2, 1, 1)).long()
    assert torch.equal(grid_flow(flows, size), expected)


def test_sampled_groups_equal_groups_built_from_labels():
    sampled = sample_trajectories(random_flows(scale=20.0), (12, 20), torch.Generator().manual_seed(5))
    rebuilt = Trajectories.from_labels(sampled.labels)
    assert torch.equal(rebuilt.labels, sampled.labels)
    assert len(rebuilt.groups) == len(sampled.groups)
    for ours, theirs in zip(sampled.groups, rebuilt.groups):
        assert torch.equal(ours, theirs)


def test_groups_index_every_multi_cell_trajectory():
    trajectories = sample_trajectories(random_flows(), (6, 10), torch.Generator().manual_seed(0))
    flat = trajectories.labels.reshape(-1)
    covered = torch.cat([g.reshape(-1) for g in trajectories.groups])
    assert len(torch.unique(covered)) == len(covered)
    for group in trajectories.groups:
        assert torch.all(flat[group] == flat[group[:, :1]])  # one trajectory per row
        assert torch.all(group[:, 1:] > group[:, :-1])  # frame order
    singletons = torch.bincount(flat) == 1
    assert len(covered) + int(singletons.sum()) == flat.numel()


def test_from_labels_rejects_invalid_partitions():
    labels = torch.arange(2 * 2 * 3).reshape(2, 2, 3)
    Trajectories.from_labels(labels)
    twice_in_frame = labels.clone()
    twice_in_frame[0, 0, 1] = twice_in_frame[0, 0, 0]
    with pytest.raises(ValueError, match="one cell per frame"):
        Trajectories.from_labels(twice_in_frame)
    gap = torch.arange(3 * 1 * 2).reshape(3, 1, 2)
    gap[2, 0, 0] = gap[0, 0, 0]
    with pytest.raises(ValueError, match="consecutive"):
        Trajectories.from_labels(gap)
    with pytest.raises(ValueError):
        Trajectories.from_labels(labels.float())


def with_value(tensor, index, value):
    tensor[index] = value
    return tensor


@pytest.mark.parametrize(
    "flows, size, message",
    [
        (torch.zeros(3, 3, 8, 8), (4, 4), "shape"),
        (torch.zeros(3, 2, 8, 8, dtype=torch.long), (4, 4), "float"),
        (torch.full((3, 2, 8, 8), float("nan")), (4, 4), "NaN"),
        (with_value(torch.zeros(3, 2, 8, 8), (1, 0, 2, 4), float("inf")), (4, 4), "infinite"),
        (torch.zeros(3, 2, 8, 8), (16, 4), "larger"),
        (torch.zeros(3, 2, 8, 8), (0, 4), "positive"),
    ],
)
def test_bad_input_gets_a_clear_error(flows, size, message):
    with pytest.raises(ValueError, match=message):
        sample_trajectories(flows, size)
