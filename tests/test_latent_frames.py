"""Source frames and latent frames: the frames that stand for latent frames, and source flows
composed between them, against slow per-pixel references written here."""

import math

import pytest
import torch

from flatten_video.latent_frames import (
    compose_flows,
    latent_frame_sources,
    num_latent_frames,
    num_source_frames,
)
from flatten_video.trajectories import sample_trajectories

from test_trajectories import random_flows, reference_labels


def bilinear(field: torch.Tensor, x: float, y: float) -> tuple[float, float]:
    """field (2, H, W) read at (x, y), clamped to the border, by hand."""
    _, height, width = field.shape
    x, y = min(max(x, 0.0), width - 1.0), min(max(y, 0.0), height - 1.0)
    x0, y0 = math.floor(x), math.floor(y)
    x1, y1 = min(x0 + 1, width - 1), min(y0 + 1, height - 1)
    ax, ay = x - x0, y - y0
    out = []
    for c in range(2):
        top = field[c, y0, x0].item() * (1 - ax) + field[c, y0, x1].item() * ax
        bottom = field[c, y1, x0].item() * (1 - ax) + field[c, y1, x1].item() * ax
        out.append(top * (1 - ay) + bottom * ay)
    return out[0], out[1]


def reference_composed(flows: torch.Tensor, k: int) -> torch.Tensor:
    """Follow every pixel of frame k*i through k source flows to frame k*(i+1), one pixel at a time."""
    links, _, height, width = flows.shape
    latent_links = (links + 1 - 1) // k
    out = torch.zeros(latent_links, 2, height, width, dtype=torch.float64)
    for i in range(latent_links):
        for y in range(height):
            for x in range(width):
                px, py = float(x), float(y)
                for step in range(k):
                    dx, dy = bilinear(flows[k * i + step].double(), px, py)
                    px, py = px + dx, py + dy
                out[i, 0, y, x], out[i, 1, y, x] = px - x, py - y
    return out


def test_frame_counts_and_the_frames_that_stand_for_latent_frames():
    assert [num_latent_frames(f, 4) for f in (1, 5, 9, 81)] == [1, 2, 3, 21]
    assert [num_source_frames(f, 4) for f in (1, 2, 21)] == [1, 5, 81]
    assert num_latent_frames(7, 1) == 7  # an image VAE: every frame its own latent frame
    assert latent_frame_sources(3, 4).tolist() == [0, 4, 8]  # the last frame each latent frame encodes
    with pytest.raises(ValueError, match="4k\\+1 frames"):
        num_latent_frames(8, 4)


def test_factor_one_is_todays_flows_unchanged():
    flows = random_flows(frames=4, height=16, width=24)
    assert compose_flows(flows, 1) is flows


@pytest.mark.parametrize("k, frames", [(4, 9), (2, 5), (3, 4)])
def test_composed_flows_match_a_per_pixel_chain(k, frames):
    flows = random_flows(frames=frames, height=12, width=20, scale=3.0, seed=k)
    composed = compose_flows(flows, k)
    assert composed.shape == (num_latent_frames(frames, k) - 1, 2, 12, 20)
    torch.testing.assert_close(composed.double(), reference_composed(flows, k), atol=1e-4, rtol=0)


def test_a_constant_motion_composes_to_k_times_itself():
    flows = torch.zeros(8, 2, 16, 16)
    flows[:, 0] = 1.5  # 1.5 px right per frame
    composed = compose_flows(flows, 4)
    assert torch.allclose(composed[:, 0], torch.full_like(composed[:, 0], 6.0)) and composed[:, 1].abs().max() == 0


def test_trajectories_over_latent_frames_follow_the_composed_motion():
    """At factor 4, 9 source frames give trajectories over 3 latent frames, sampled by the paper's
    rules from the composed flows (the per-cell reference of test_trajectories)."""
    flows = random_flows(frames=9, height=32, width=48, scale=4.0, seed=3)
    composed = compose_flows(flows, 4)
    trajectories = sample_trajectories(composed, (8, 12), torch.Generator().manual_seed(0))
    assert trajectories.labels.shape == (3, 8, 12)
    expected = reference_labels(composed, (8, 12), torch.Generator().manual_seed(0))
    assert torch.equal(trajectories.labels, expected)
