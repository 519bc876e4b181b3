"""Source frames and latent frames: which source frames a latent frame stands for, and the flow
between the frames that stand for consecutive latent frames (docs/architecture.md, "Latent
frames").

A VAE with temporal factor k encodes F = k*m + 1 source frames into F' = m + 1 latent frames:
latent frame 0 from source frame 0 alone, latent frame i from source frames k(i-1)+1 .. k*i (a
causal video VAE, such as Wan's with k = 4). An image VAE (k = 1) encodes every frame into its
own latent frame, so F' = F and everything here is the identity.

Trajectories follow motion between latent frames. Latent frame i is stood for by source frame
k*i, the last frame it encodes (frame 0 for latent frame 0): these frames are evenly spaced, k
apart, so every composed flow spans the same time, and latent frame 0, which encodes frame 0
alone, needs no exception. The flow between two of them is the chain of the k consecutive source
flows between them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .validation import check_overlap_fit, check_temporal_fit


def num_latent_frames(num_frames: int, temporal_factor: int) -> int:
    """F' latent frames of F = k*m + 1 source frames: m + 1 (F itself for k = 1)."""
    check_temporal_fit("the video's length", num_frames, temporal_factor)
    return (num_frames - 1) // temporal_factor + 1


def num_source_frames(num_latent_frames: int, temporal_factor: int) -> int:
    """F = k*(F'-1) + 1 source frames encode into ``num_latent_frames`` latent frames."""
    return temporal_factor * (num_latent_frames - 1) + 1


def latent_frame_sources(num_latent_frames: int, temporal_factor: int) -> torch.Tensor:
    """(F',) the source frame that stands for each latent frame: 0, k, 2k, ..."""
    return torch.arange(num_latent_frames) * temporal_factor


def compose_flows(flows: torch.Tensor, temporal_factor: int) -> torch.Tensor:
    """Forward flows between consecutive source frames -> between the frames that stand for
    consecutive latent frames.

    A pixel p of frame a moves to p + f_a(p) in frame a + 1, then on by f_{a+1} read at that
    point (bilinearly, clamped to the frame's border), and so on for k steps.

    Args:
        flows: (F-1, 2, H, W) forward flows in pixels (channel 0 = x, 1 = y), F = k*m + 1.
        temporal_factor: k.

    Returns:
        (F'-1, 2, H, W), F' = m + 1; ``flows`` itself for k = 1.
    """
    if temporal_factor == 1:
        return flows
    links, _, height, width = flows.shape
    latent_links = num_latent_frames(links + 1, temporal_factor) - 1
    ys, xs = torch.meshgrid(torch.arange(height, dtype=flows.dtype, device=flows.device),
                            torch.arange(width, dtype=flows.dtype, device=flows.device), indexing="ij")
    # grid_sample's coordinates: -1 and 1 are the centres of the border pixels (align_corners).
    scale = torch.tensor([2 / max(width - 1, 1), 2 / max(height - 1, 1)], dtype=flows.dtype, device=flows.device)
    start = torch.stack([xs, ys], -1).expand(latent_links, height, width, 2)
    total = torch.zeros(latent_links, 2, height, width, dtype=flows.dtype, device=flows.device)
    for step in range(temporal_factor):
        flow = flows[step::temporal_factor][:latent_links]  # the step-th link of every latent link
        grid = (start + total.permute(0, 2, 3, 1)) * scale - 1
        total = total + F.grid_sample(flow, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return total


def latent_window(window: int, overlap: int, temporal_factor: int) -> tuple[int, int]:
    """A long clip's window and overlap counted in source frames -> in latent frames.

    A window of k*m + 1 source frames holds m + 1 latent frames (0 stays 0: the whole clip); an
    overlap of o source frames, a multiple of k, shares o / k latent frames. The identity for
    k = 1. ``ValueError`` (naming source frames) for a window or overlap the VAE cannot cut at.
    """
    if temporal_factor == 1:
        return window, overlap
    if window:
        check_temporal_fit("window", window, temporal_factor)
    check_overlap_fit("overlap", overlap, temporal_factor)
    return (num_latent_frames(window, temporal_factor) if window else 0), overlap // temporal_factor
