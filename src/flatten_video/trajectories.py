"""Patch trajectories sampled from optical flow (DESIGN.md 1.3).

A trajectory is a chain of latent cells, one per frame in consecutive frames, that the flow
carries into one another. The trajectories of a video partition its cells: every cell lies on
exactly one. Flow-guided attention lets every token attend to the tokens of its own trajectory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Trajectories:
    """A partition of a video's latent cells into trajectories.

    Attributes:
        labels: (F, h, w) LongTensor, the trajectory id (0..N-1) of every cell.
        groups: derived index form for attention. One (n_L, L) LongTensor per trajectory length
            L >= 2, holding the flat token indices ``t*h*w + y*w + x`` of the n_L trajectories of
            that length, in frame order. Trajectories of length 1 need no attention (a token
            alone attends to itself) and are left out.
    """

    labels: torch.Tensor
    groups: tuple[torch.Tensor, ...] = field(repr=False)

    @classmethod
    def from_labels(cls, labels: torch.Tensor) -> "Trajectories":
        """Build from a (F, h, w) tensor of trajectory ids; checks that it is a valid partition.

        Ids may be any integers; they are renumbered 0..N-1 in order of first appearance.
        """
        if not isinstance(labels, torch.Tensor) or labels.ndim != 3 or labels.is_floating_point():
            raise ValueError("labels must be an integer tensor of shape (F, h, w)")
        labels = _renumber(labels.long())
        frames, height, width = labels.shape
        flat = labels.reshape(-1)
        # Tokens are frame-major, so a stable sort by id lists each trajectory in frame order.
        order = torch.argsort(flat, stable=True)
        frame_of = order // (height * width)
        same = flat[order[1:]] == flat[order[:-1]]
        if not torch.all(frame_of[1:][same] == frame_of[:-1][same] + 1):
            raise ValueError("every trajectory must hold at most one cell per frame, in consecutive frames")
        counts = torch.bincount(flat)
        starts = torch.cumsum(counts, 0) - counts
        groups = []
        for length in torch.unique(counts).tolist():
            if length < 2:
                continue
            first = starts[counts == length]
            groups.append(order[first[:, None] + torch.arange(length, device=labels.device)])
        return cls(labels=labels, groups=tuple(groups))

    @property
    def num_frames(self) -> int:
        return self.labels.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        """The latent grid (h, w)."""
        return tuple(self.labels.shape[1:])

    @property
    def num_trajectories(self) -> int:
        return int(self.labels.max()) + 1

    def to(self, device: torch.device | str) -> "Trajectories":
        return Trajectories(self.labels.to(device), tuple(g.to(device) for g in self.groups))


def _renumber(labels: torch.Tensor) -> torch.Tensor:
    """Renumber ids to 0..N-1 in order of first appearance (frame-major)."""
    flat = labels.reshape(-1)
    unique, inverse = torch.unique(flat, return_inverse=True)
    first = torch.full((len(unique),), flat.numel(), dtype=torch.long, device=flat.device)
    first.scatter_reduce_(0, inverse, torch.arange(flat.numel(), device=flat.device), reduce="amin")
    rank = torch.empty_like(first)
    rank[torch.argsort(first)] = torch.arange(len(unique), device=flat.device)
    return rank[inverse].reshape(labels.shape)


def grid_flow(flows: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Flows in pixels (F-1, 2, H, W) -> integer cell displacements (F-1, 2, h, w).

    Nearest resizing (source pixel floor(i * H / h), as ``F.interpolate(mode="nearest")``
    picks) and rounding, as the paper's code does. Only the picked pixels are read.
    """
    height, width = flows.shape[-2:]
    h, w = size
    rows = torch.arange(h, device=flows.device) * height // h
    cols = torch.arange(w, device=flows.device) * width // w
    small = flows[:, :, rows][:, :, :, cols].float()
    scale = torch.tensor([w / width, h / height], device=flows.device).view(1, 2, 1, 1)
    return torch.round(small * scale).long()


def _check_flows(flows: torch.Tensor, size: tuple[int, int]) -> None:
    if not isinstance(flows, torch.Tensor) or not flows.is_floating_point():
        raise ValueError("flows must be a float tensor of shape (F-1, 2, H, W)")
    if flows.ndim != 4 or flows.shape[1] != 2:
        raise ValueError(f"flows must have shape (F-1, 2, H, W), got {tuple(flows.shape)}")
    if not torch.isfinite(flows.sum()):  # one pass; any NaN or inf makes the sum non-finite
        raise ValueError("flows contain NaN or infinite values")
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be a positive (h, w), got {size}")
    if size[0] > flows.shape[2] or size[1] > flows.shape[3]:
        raise ValueError(f"grid size {tuple(size)} is larger than the flow's size {tuple(flows.shape[2:])}")


def sample_trajectories(
    flows: torch.Tensor, size: tuple[int, int], generator: torch.Generator | None = None
) -> Trajectories:
    """Sample the trajectories of one latent grid from forward flows (DESIGN.md 1.3).

    Every cell (t, y, x) with t < F-1 points to (t+1, y+dy, x+dx) when that is inside the grid.
    When several cells point to the same target, one of them, chosen uniformly at random from
    ``generator``, continues there; the others' trajectories end at frame t. A cell that no
    trajectory continues into starts a new one.

    Args:
        flows: (F-1, 2, H, W) forward flows in pixels, channel 0 = x, channel 1 = y.
        size: the latent grid (h, w), at most (H, W).
        generator: a CPU generator; the same seed gives the same trajectories.

    Returns:
        :class:`Trajectories` over F = len(flows) + 1 frames.
    """
    _check_flows(flows, size)
    h, w = size
    cells = h * w
    steps = grid_flow(flows.detach().cpu(), (h, w)).reshape(-1, 2, cells)
    links = len(steps)
    ys = torch.arange(h).repeat_interleave(w)
    xs = torch.arange(w).repeat(h)
    ty, tx = ys + steps[:, 1], xs + steps[:, 0]
    inside = (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w)
    # Cells are numbered video-wide, t * cells + y * w + x; every link goes from frame t to t+1.
    frame_start = (torch.arange(links) * cells)[:, None]
    sources = (frame_start + torch.arange(cells))[inside]
    targets = (frame_start + cells + ty * w + tx)[inside]
    # Distinct random priorities per frame: the highest-priority source of each target
    # continues, so every source of a conflict wins with equal probability.
    priority = torch.stack([torch.randperm(cells, generator=generator) for _ in range(links)])[inside]
    total = (links + 1) * cells
    best = torch.full((total,), -1, dtype=torch.long).scatter_reduce(0, targets, priority, reduce="amax")
    winner = priority == best[targets]
    previous = torch.arange(total)
    previous[targets[winner]] = sources[winner]
    # Pointer jumping: every cell finds the first cell of its trajectory in log2(F) rounds.
    head = previous
    while not torch.equal(jumped := head[head], head):
        head = jumped
    # Trajectories are numbered by their first cell, which is their order of appearance.
    labels = torch.unique(head, return_inverse=True)[1]
    return Trajectories.from_labels(labels.reshape(links + 1, h, w))
