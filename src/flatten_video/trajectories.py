"""Patch trajectories sampled from optical flow (docs/architecture.md, The method, step 3).

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
        count = int(flat.max()) + 1
        frame = _frame_of_cells(frames, height * width, labels.device)
        first = torch.full((count,), frames, device=labels.device).scatter_reduce_(0, flat, frame, reduce="amin")
        depth = frame - first[flat]
        lengths = torch.bincount(flat, minlength=count)
        # A trajectory of n cells starting at frame f holds frames f..f+n-1 exactly when no depth
        # reaches n and no two of its cells share a depth (a slot in the layout).
        slots = _slots(flat, depth, lengths)
        valid = bool((depth < lengths[flat]).all()) and bool(
            (torch.bincount(slots, minlength=flat.numel()) == 1).all()
        )
        if not valid:
            raise ValueError("every trajectory must hold at most one cell per frame, in consecutive frames")
        return cls(labels=labels, groups=_groups(slots, lengths))

    @property
    def num_frames(self) -> int:
        return self.labels.shape[0]

    @property
    def num_trajectories(self) -> int:
        return int(self.labels.max()) + 1

    def to(self, device: torch.device | str) -> "Trajectories":
        return Trajectories(self.labels.to(device), tuple(g.to(device) for g in self.groups))

    def select(self, frames: torch.Tensor) -> "Trajectories":
        """The trajectories seen by a batch holding only ``frames`` (K,), in that order.

        Every trajectory keeps its cells in those frames, so a token attends to the tokens of its
        own trajectory that are in the batch (docs/architecture.md, Long clips): a window of a long clip, with anchor
        frames from elsewhere in the clip, uses the clip-wide trajectories this way. The frames
        need not be consecutive, so the result's trajectories may skip frames.
        """
        labels = _renumber(self.labels.index_select(0, frames.to(self.labels.device)))
        flat = labels.reshape(-1)
        lengths = torch.bincount(flat)
        # A token's depth is the count of its trajectory's cells before it, frame-major.
        order = torch.argsort(flat, stable=True)
        first = torch.cumsum(lengths, 0) - lengths
        depth = torch.empty_like(flat).scatter_(0, order, torch.arange(len(flat), device=flat.device) - first[flat[order]])
        return Trajectories(labels=labels, groups=_groups(_slots(flat, depth, lengths), lengths))


def _frame_of_cells(frames: int, cells: int, device=None, dtype=torch.long) -> torch.Tensor:
    """(frames * cells,) frame index of every cell, numbered frame-major."""
    return torch.arange(frames, device=device, dtype=dtype).repeat_interleave(cells)


def _slots(flat: torch.Tensor, depth: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Where each token goes in a layout that lists trajectories by length, then by id, each in
    frame order: so the trajectories of one length form one contiguous (n_L, L) block.

    Args:
        flat: (T,) trajectory id of every token.
        depth: (T,) the token's position along its trajectory (0 for its first cell).
        lengths: (N,) cells per trajectory.
    """
    by_length = torch.argsort(lengths, stable=True)
    ordered_lengths = lengths[by_length]
    offsets = torch.empty_like(lengths).scatter_(0, by_length, torch.cumsum(ordered_lengths, 0) - ordered_lengths)
    return offsets.index_select(0, flat).add_(depth)


def _groups(slots: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The (n_L, L) token index blocks of :attr:`Trajectories.groups`, from :func:`_slots`."""
    tokens = torch.empty_like(slots).scatter_(0, slots, torch.arange(len(slots), device=slots.device))
    groups = []
    start = 0
    for length, count in enumerate(torch.bincount(lengths).tolist()):
        if count and length >= 2:
            groups.append(tokens[start : start + count * length].view(count, length))
        start += count * length
    return tuple(groups)


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
    """Flows in pixels (F-1, 2, H, W) -> integer cell displacements (F-1, 2, h, w), int32.

    Nearest resizing (source pixel floor(i * H / h), as ``F.interpolate(mode="nearest")``
    picks) and rounding, as the paper's code does. Only the picked pixels are read, and a NaN or
    infinite value among them is a ``ValueError``.
    """
    return _to_cells(_nearest(flows, size), flows.shape[-2:])


def _nearest(flows: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The pixels nearest resizing of (..., H, W) to (..., h, w) picks, as a view where it can."""
    height, width = flows.shape[-2:]
    h, w = size
    if height % h == 0 and width % w == 0:
        # Nearest then picks every k-th pixel: a strided view reads them without a gather.
        return flows[..., :: height // h, :: width // w]
    rows = torch.arange(h, device=flows.device) * height // h
    cols = torch.arange(w, device=flows.device) * width // w
    return flows.index_select(-2, rows).index_select(-1, cols)


def _to_cells(picked: torch.Tensor, pixel_size: tuple[int, int]) -> torch.Tensor:
    """Picked flows (F-1, 2, h, w), in pixels of an (H, W) frame -> rounded cell steps, int32."""
    (h, w), (height, width) = picked.shape[-2:], pixel_size
    scale = torch.tensor([w / width, h / height], device=picked.device).view(1, 2, 1, 1)
    cells = picked.float() * scale
    if not torch.isfinite(cells.sum()):  # any NaN or inf makes the sum non-finite
        raise ValueError("flows contain NaN or infinite values")
    return cells.round_().int()


def _check_flows(flows: torch.Tensor, size: tuple[int, int]) -> None:
    if not isinstance(flows, torch.Tensor) or not flows.is_floating_point():
        raise ValueError("flows must be a float tensor of shape (F-1, 2, H, W)")
    if flows.ndim != 4 or flows.shape[1] != 2:
        raise ValueError(f"flows must have shape (F-1, 2, H, W), got {tuple(flows.shape)}")
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be a positive (h, w), got {size}")
    if size[0] > flows.shape[2] or size[1] > flows.shape[3]:
        raise ValueError(f"grid size {tuple(size)} is larger than the flow's size {tuple(flows.shape[2:])}")


def sample_trajectories(
    flows: torch.Tensor, size: tuple[int, int], generator: torch.Generator | None = None
) -> Trajectories:
    """Sample the trajectories of one latent grid from forward flows (docs/architecture.md, The method, step 3).

    Every cell (t, y, x) with t < F-1 points to (t+1, y+dy, x+dx) when that is inside the grid.
    When several cells point to the same target, one of them, chosen uniformly at random from
    ``generator``, continues there; the others' trajectories end at frame t. A cell that no
    trajectory continues into starts a new one.

    Args:
        flows: (F-1, 2, H, W) forward flows in pixels, channel 0 = x, channel 1 = y. Only the
            pixels that nearest resizing to ``size`` picks are read (and checked for NaN).
        size: the latent grid (h, w), at most (H, W).
        generator: a CPU generator; the same seed gives the same trajectories.

    Returns:
        :class:`Trajectories` over F = len(flows) + 1 frames.
    """
    return sample_trajectory_pyramid(flows, [size], generator)[tuple(size)]


def sample_trajectory_pyramid(
    flows: torch.Tensor, sizes: list[tuple[int, int]], generator: torch.Generator | None = None
) -> dict[tuple[int, int], Trajectories]:
    """:func:`sample_trajectories` for several grids of one video, in the order given.

    Equal to calling it for each size in turn with the same generator, but the flow is read
    once: where the grids nest (each side divides the finest grid's, which divides the flow's),
    a coarser grid's pixels are picked from the finest grid's.

    Args:
        flows: (F-1, 2, H, W) forward flows in pixels.
        sizes: distinct latent grids (h, w), each at most (H, W).

    Returns:
        {(h, w): :class:`Trajectories`}.
    """
    sizes = [tuple(size) for size in sizes]
    for size in sizes:
        _check_flows(flows, size)
    flows = flows.detach()
    height, width = flows.shape[-2:]
    fine_h, fine_w = max(sizes, key=lambda size: size[0] * size[1])
    fine = _nearest(flows, (fine_h, fine_w))
    if len(sizes) > 1:  # copied out of the flow once, so the coarser grids read this small tensor
        fine = fine.contiguous()
    fine_is_exact = height % fine_h == 0 and width % fine_w == 0
    result = {}
    for h, w in sizes:
        nested = fine_is_exact and fine_h % h == 0 and fine_w % w == 0
        picked = _nearest(fine if nested else flows, (h, w))
        result[(h, w)] = _sample(_to_cells(picked, (height, width)).cpu(), generator)
    return result


def _sample(steps: torch.Tensor, generator: torch.Generator | None) -> Trajectories:
    """The trajectories of cell steps (F-1, 2, h, w) int32 from :func:`grid_flow` (consumed)."""
    h, w = steps.shape[-2:]
    frames = len(steps) + 1
    # Cells are numbered video-wide, t*h*w + y*w + x. The work is a few dozen passes over all
    # cells, in place and in int32 where possible: fresh memory costs as much as the arithmetic.
    cell = torch.arange(frames * h * w, dtype=torch.int32)
    head = _first_cells(_previous_cells(steps, cell, generator).int(), frames)
    # Trajectories are numbered by their first cell, which is their order of appearance.
    labels = torch.cumsum(head == cell, 0).sub_(1).index_select(0, head)
    frame = _frame_of_cells(frames, h * w, dtype=torch.int32)
    depth = frame.index_select(0, head).neg_().add_(frame)
    lengths = torch.bincount(labels)
    groups = _groups(_slots(labels, depth, lengths), lengths)
    return Trajectories(labels=labels.view(frames, h, w), groups=groups)


def _first_cells(previous: torch.Tensor, frames: int) -> torch.Tensor:
    """Pointer jumping: from each cell's predecessor (itself at a start) to the first cell of its
    trajectory. After k rounds of ``head = head[head]`` every cell points 2**k cells back along
    its trajectory (or to its start), and no trajectory is longer than F. Overwrites ``previous``."""
    head, jumped = previous, torch.empty_like(previous)
    for _ in range(max(frames - 1, 1).bit_length()):
        torch.index_select(head, 0, head, out=jumped)
        head, jumped = jumped, head
    return head


def _previous_cells(steps: torch.Tensor, cell: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """The cell each cell continues from, or itself where a trajectory starts.

    Args:
        steps: (F-1, 2, h, w) int32 cell displacements from :func:`grid_flow` (consumed).
        cell: (F*h*w,) the cell numbers 0..F*h*w-1.

    Returns:
        (F*h*w,) LongTensor.
    """
    links, _, h, w = steps.shape
    frames = links + 1
    # Targets are addressed in a grid padded by one cell on each side: a target off the grid
    # is clamped onto the border, which is dropped afterwards, so no tensor is masked.
    padded_w = w + 2
    frame_offset = torch.arange(1, frames, dtype=torch.int32).mul_((h + 2) * padded_w).add_(padded_w + 1)
    ty = steps[:, 1].add_(torch.arange(h, dtype=torch.int32)[:, None]).clamp_(-1, h)
    tx = steps[:, 0].add_(torch.arange(w, dtype=torch.int32)).clamp_(-1, w)
    target = ty.mul_(padded_w).add_(tx).add_(frame_offset[:, None, None]).long()
    # A key packs a random priority above the source's number; the highest key reaching a target
    # continues there, so every source of a conflict wins with equal probability. A distinct
    # priority per source (a permutation) means no ties. A cell no source reaches keeps its
    # negative default key, whose low bits are its own number: it starts a trajectory.
    shift = max(len(cell) - 1, 1).bit_length()
    low_bits = (1 << shift) - 1
    keys = torch.randperm(links * h * w, generator=generator).bitwise_left_shift_(shift)
    keys.bitwise_or_(cell[: links * h * w])
    best = torch.empty((frames, h + 2, padded_w), dtype=torch.long)
    interior = best[:, 1:-1, 1:-1]
    interior.copy_(cell.view(frames, h, w)).sub_(1 << shift)
    best.view(-1).scatter_reduce_(0, target.view(-1), keys, reduce="amax")
    return interior.reshape(-1).bitwise_and_(low_bits)


def start_noise(
    channels: int, frames: int, size: tuple[int, int], labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """ControlVideo's starting noise, (1, C, F, h, w): one (1, C, h, w) draw shared by every frame,
    or, given trajectory ``labels`` (F, h, w), one C-vector per trajectory shared by its cells."""
    if labels is None:
        return torch.randn(1, channels, 1, *size, generator=generator).expand(-1, -1, frames, -1, -1)
    per_trajectory = torch.randn(int(labels.max()) + 1, channels, generator=generator)
    return per_trajectory[labels].permute(3, 0, 1, 2).unsqueeze(0)
