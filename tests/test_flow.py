"""Tests for flatten_video.flow: DIS accuracy, RAFT wiring (random weights), offline errors, bad input."""

from __future__ import annotations

import os
import pathlib
import urllib.error

import pytest
import torch
import torch.nn.functional as F
import torchvision.models._api as tv_weights_api
from torchvision.models.optical_flow import Raft_Large_Weights, raft_small

from conftest import moving_texture
from flatten_video.flow import FLOW_METHODS, FlowWeightsUnavailable, estimate_flow


def smooth_texture(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """(3, H, W) in [0, 1]: bicubic-upsampled noise, with detail at every scale DIS looks at."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, height // 8, width // 8, generator=generator)
    return F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1)[0]


def translated(texture: torch.Tensor, frames: int, dx: int, dy: int) -> torch.Tensor:
    """(F, 3, H, W): frame t is ``texture`` moved by t * (dx, dy) pixels (x right, y down)."""
    return torch.stack([torch.roll(texture, shifts=(t * dy, t * dx), dims=(1, 2)) for t in range(frames)])


def interior(flows: torch.Tensor, margin: int = 16) -> torch.Tensor:
    return flows[..., margin:-margin, margin:-margin]


# ------------------------------------------------------------------------------------------- DIS


def test_dis_recovers_the_pan_of_moving_texture():
    frames = moving_texture(frames=4, height=64, width=96, shift=3)
    flows = estimate_flow(frames, "dis", progress=False)

    assert flows.shape == (3, 2, 64, 96)
    assert flows.dtype == torch.float32
    for t in range(3):
        dx, dy = interior(flows[t]).flatten(1).median(dim=1).values.tolist()
        assert dx == pytest.approx(3.0, abs=0.5), f"pair {t}: x flow {dx}"
        assert dy == pytest.approx(0.0, abs=0.5), f"pair {t}: y flow {dy}"


@pytest.mark.parametrize("dx, dy", [(2, 0), (0, -3), (-2, 2)])
def test_dis_recovers_a_known_translation(dx, dy):
    frames = translated(smooth_texture(80, 112, seed=1), frames=3, dx=dx, dy=dy)
    flows = estimate_flow(frames, "dis", progress=False)

    assert flows.shape == (2, 2, 80, 112)
    assert flows.dtype == torch.float32
    median = interior(flows).transpose(0, 1).flatten(1).median(dim=1).values
    assert median.tolist() == pytest.approx([dx, dy], abs=0.5)


def test_dis_on_a_static_clip_is_zero():
    frames = translated(smooth_texture(64, 64, seed=2), frames=3, dx=0, dy=0)
    flows = estimate_flow(frames, "dis", progress=False)
    assert flows.abs().max() < 0.1


# ------------------------------------------------------------------------------------------ RAFT


@pytest.fixture(scope="module")
def random_raft():
    """RAFT-small with random weights: tests the wiring (scaling, padding, chunking), not the accuracy."""
    torch.manual_seed(0)
    return raft_small(weights=None, progress=False).eval()


@pytest.mark.parametrize(
    "height, width, padded_height, padded_width",
    [
        (60, 90, 128, 128),  # below RAFT's 128 px minimum and not multiples of 8
        (132, 140, 136, 144),  # large enough, but not multiples of 8
    ],
)
def test_raft_pads_odd_sizes_and_crops_the_flow_back(random_raft, height, width, padded_height, padded_width):
    frames = translated(smooth_texture(height, width, seed=3), frames=3, dx=2, dy=1)
    flows = estimate_flow(frames, "raft", raft_model=random_raft, progress=False)

    assert flows.shape == (2, 2, height, width)
    assert flows.dtype == torch.float32
    assert torch.isfinite(flows).all()

    # What the wiring should compute: inputs in [-1, 1], replicate-padded at the bottom and right,
    # the last of RAFT's refinements, cropped back to the top-left corner.
    padding = (0, padded_width - width, 0, padded_height - height)
    padded = F.pad(frames * 2 - 1, padding, mode="replicate")
    with torch.no_grad():
        expected = random_raft(padded[:-1], padded[1:])[-1][..., :height, :width]
    torch.testing.assert_close(flows, expected, atol=1e-5, rtol=1e-5)


def test_raft_chunking_does_not_change_the_result(random_raft):
    frames = moving_texture(frames=4, height=64, width=96, shift=4)  # padded to 128x128 for RAFT
    one_at_a_time = estimate_flow(frames, "raft", raft_model=random_raft, chunk_size=1, progress=False)
    all_at_once = estimate_flow(frames, "raft", raft_model=random_raft, chunk_size=8, progress=False)
    uneven = estimate_flow(frames, "raft", raft_model=random_raft, chunk_size=2, progress=False)

    assert one_at_a_time.shape == (3, 2, 64, 96)
    # Deterministic, but batched CPU kernels sum in another order: flows of ~20 px (random weights) differ
    # by a few 1e-5 px after RAFT's 12 refinements, so allow 1e-4 px.
    torch.testing.assert_close(all_at_once, one_at_a_time, atol=1e-4, rtol=0)
    torch.testing.assert_close(uneven, one_at_a_time, atol=1e-4, rtol=0)
    # Each pair gets its own flow: not one pair's result repeated.
    assert not torch.allclose(one_at_a_time[0], one_at_a_time[1])


def test_raft_without_weights_offline_points_to_dis_and_the_weights_path(monkeypatch):
    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("no network in tests")

    # torchvision imports the function by name, so patch its copy as well as torch.hub's.
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(tv_weights_api, "load_state_dict_from_url", offline)

    frames = moving_texture(frames=2, height=64, width=64)
    with pytest.raises(FlowWeightsUnavailable) as info:
        estimate_flow(frames, "raft", progress=False)

    assert calls == [Raft_Large_Weights.DEFAULT.url]  # the loader was reached, and never the network
    message = str(info.value)
    assert "dis" in message
    assert "\n" not in message  # one line, printable as is by the CLI
    filename = Raft_Large_Weights.DEFAULT.url.rsplit("/", 1)[-1]
    expected_path = pathlib.Path(torch.hub.get_dir()) / "checkpoints" / filename
    assert str(expected_path) in message
    # conftest points TORCH_HOME at a temporary folder: the path named is that one.
    assert str(expected_path).startswith(os.environ["TORCH_HOME"])
    assert isinstance(info.value.__cause__, urllib.error.URLError)


# ------------------------------------------------------------------------------------- bad input


GOOD = moving_texture(frames=3, height=32, width=32)


@pytest.mark.parametrize("method", FLOW_METHODS)
@pytest.mark.parametrize(
    "frames, words",
    [
        (GOOD[0], "shape"),  # one frame without the frame axis: (3, H, W)
        (GOOD[:, :1], "shape"),  # one channel
        (GOOD[:, :, None], "shape"),  # 5-D
        (GOOD[:1], "at least 2 frames"),
        ((GOOD * 255).to(torch.uint8), "float"),
        (GOOD.long(), "float"),
        (GOOD.numpy(), "float tensor"),
        (GOOD.clone().index_fill_(2, torch.tensor([5]), float("nan")), "NaN"),
        (GOOD.clone().index_fill_(3, torch.tensor([0]), float("inf")), "infinite"),
    ],
    ids=["3d", "1-channel", "5d", "1-frame", "uint8", "int64", "numpy", "nan", "inf"],
)
def test_bad_frames_raise_value_error(method, frames, words):
    with pytest.raises(ValueError, match=words):
        estimate_flow(frames, method, progress=False)


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown flow method 'farneback'.*raft, dis"):
        estimate_flow(GOOD, "farneback", progress=False)
