"""Tests of flatten_video.eval.metrics, offline, with a tiny random CLIP saved to a temp folder."""

import math
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # never touch the network, even by accident
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
from PIL import Image

from flatten_video.eval import metrics
from flatten_video.eval.metrics import (
    MetricModelError,
    Scores,
    clip_frame_score,
    clip_text_score,
    edit_score,
    evaluate_video,
    load_clip,
    non_occlusion_mask,
    pick_score,
    warp_error,
)

from metrics_fixtures import CLIP_IMAGE_SIZE, CLIP_MEAN, CLIP_STD, moving_texture, recolour, translation_flows

PROMPT = "a cat in the snow"


@pytest.fixture(scope="session")
def clip(clip_path):
    return load_clip(clip_path, device="cpu")


def _frames(count, size=32, seed=0):
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _reference_pixels(frames):
    """LOVEU-TGVE's evaluation by hand, frame by frame: 8-bit RGB, PIL bicubic resize to 480x480,
    then what the tiny CLIP's processor does to a square image (PIL bicubic to 32x32, nothing left
    to crop, rescale, normalise)."""
    pixels = []
    for frame in frames:
        array = (frame * 255).round().byte().permute(1, 2, 0).numpy()
        image = Image.fromarray(array).resize((480, 480), Image.BICUBIC).resize((CLIP_IMAGE_SIZE,) * 2, Image.BICUBIC)
        pixel = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
        pixels.append((pixel - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None])
    return torch.stack(pixels)


def _reference_embeds(model, frames):
    with torch.no_grad():
        features = model.get_image_features(pixel_values=_reference_pixels(frames))
    return torch.nn.functional.normalize(getattr(features, "pooler_output", features), dim=-1)


def _reference_cosines(model, processor, frames, prompt):
    """cos(image, text) per frame, the frames prepared by :func:`_reference_pixels`."""
    text = processor.tokenizer([prompt], return_tensors="pt")
    with torch.no_grad():
        text_features = model.get_text_features(**text)
    text_features = getattr(text_features, "pooler_output", text_features)
    return torch.nn.functional.cosine_similarity(_reference_embeds(model, frames), text_features)


# ----------------------------------------------------------------------------- CLIP


def test_clip_text_score_matches_hand_computed_cosine(clip_path, clip):
    frame = _frames(1)
    expected = _reference_cosines(*clip, frame, PROMPT).item()
    assert clip_text_score(frame, PROMPT, clip_path) == pytest.approx(expected, abs=1e-5)


def test_clip_text_score_is_mean_over_frames_and_batching_does_not_matter(clip_path, clip):
    frames = _frames(5, seed=1)
    expected = _reference_cosines(*clip, frames, PROMPT).mean().item()
    assert clip_text_score(frames, PROMPT, clip, batch_size=2) == pytest.approx(expected, abs=1e-5)


def test_frames_are_resized_to_480x480_before_the_processor(clip_path, clip):
    """A non-square clip is scored as its 480x480 resize (the whole frame, squeezed), not as the
    processor's centre crop of it."""
    model, processor = clip
    frames = _frames(3, seed=7)[..., :24, :]
    frames = torch.nn.functional.interpolate(frames, size=(40, 64), mode="bilinear")  # 40x64, smooth
    expected = _reference_cosines(model, processor, frames, PROMPT)
    assert clip_text_score(frames, PROMPT, clip_path) == pytest.approx(expected.mean().item(), abs=1e-5)
    embeds = _reference_embeds(model, frames)
    assert clip_frame_score(frames, clip) == pytest.approx(((embeds @ embeds.T).sum().item() - 3) / 6, abs=1e-5)
    # The test can tell: handing the processor the frames as they are scores something else.
    as_is = processor(images=list((frames * 255).round().byte().permute(0, 2, 3, 1).numpy()), return_tensors="pt")
    with torch.no_grad():
        crop = model.get_image_features(**as_is)
    crop = torch.nn.functional.normalize(getattr(crop, "pooler_output", crop), dim=-1)
    assert (crop * embeds).sum(-1).min() < 0.999


def test_clip_processor_resizes_with_pil_as_the_official_evaluation(clip):
    """transformers 5 would pick its torchvision backend, whose resize differs slightly."""
    from transformers import __version__

    expected = "CLIPImageProcessorPil" if int(__version__.split(".")[0]) >= 5 else "CLIPImageProcessor"
    assert type(clip[1].image_processor).__name__ == expected


def test_identical_frames_give_clip_f_one(clip):
    frames = _frames(1).repeat(4, 1, 1, 1)
    assert clip_frame_score(frames, clip) == pytest.approx(1.0, abs=1e-5)
    assert clip_frame_score(frames, clip, pairs="consecutive") == pytest.approx(1.0, abs=1e-5)


def test_clip_f_all_and_consecutive_agree_on_two_frames(clip):
    frames = _frames(2, seed=2)
    assert clip_frame_score(frames, clip, pairs="all") == pytest.approx(
        clip_frame_score(frames, clip, pairs="consecutive"), abs=1e-7
    )


def test_clip_f_pairs(clip):
    model, processor = clip
    frames = _frames(3, seed=3)
    sim = _reference_embeds(model, frames) @ _reference_embeds(model, frames).T
    all_pairs = ((sim[0, 1] + sim[0, 2] + sim[1, 2]) / 3).item()
    assert clip_frame_score(frames, clip, pairs="consecutive") == pytest.approx(((sim[0, 1] + sim[1, 2]) / 2).item(), abs=1e-5)
    assert clip_frame_score(frames, clip, pairs="all") == pytest.approx(all_pairs, abs=1e-5)
    assert clip_frame_score(frames, clip) == pytest.approx(all_pairs, abs=1e-5)  # the default: all pairs
    assert abs(all_pairs - ((sim[0, 1] + sim[1, 2]) / 2).item()) > 1e-4  # the two differ on these frames
    with pytest.raises(ValueError):
        clip_frame_score(frames[:1], clip)
    with pytest.raises(ValueError):
        clip_frame_score(frames, clip, pairs="random")


def test_pick_score_is_scaled_cosine(clip_path, clip):
    frames = _frames(3, seed=4)
    model, processor = clip
    expected = (model.logit_scale.exp() * _reference_cosines(model, processor, frames, PROMPT)).mean().item()
    assert pick_score(frames, PROMPT, clip_path, clip_path) == pytest.approx(expected, rel=1e-5)
    assert pick_score(frames, PROMPT, clip) == pytest.approx(expected, rel=1e-5)


def test_load_clip_caches_and_prefers_safetensors(clip_path):
    assert load_clip(clip_path, device="cpu") is load_clip(clip_path, device="cpu")
    assert any(name.endswith(".safetensors") for name in os.listdir(clip_path))


@pytest.mark.parametrize("name", ["/no/such/clip-folder", "./missing-clip", "nobody/not-a-cached-model"])
def test_missing_model_raises_metric_model_error(name):
    with pytest.raises(MetricModelError, match="not-a-cached-model|does not exist"):
        load_clip(name, device="cpu")
    with pytest.raises(MetricModelError):
        clip_text_score(_frames(1), PROMPT, name)


# ----------------------------------------------------------------------------- Ewarp


FRAMES, SIZE, STEP = 5, 64, 2.0


@pytest.fixture(scope="module")
def moving():
    source = moving_texture(FRAMES, SIZE, SIZE, STEP)
    return source, recolour(source)


def test_consistent_edit_has_near_zero_warp_error_with_exact_flow(moving):
    source, edit = moving
    flows = translation_flows(FRAMES, SIZE, SIZE, STEP)
    consistent = warp_error(edit, source, flows=flows)
    shuffled = warp_error(edit[torch.tensor([0, 3, 1, 4, 2])], source, flows=flows)
    assert consistent < 1e-9
    assert shuffled > 1e-3
    assert shuffled > 10 * consistent


def test_consistent_edit_has_small_warp_error_with_dis_flow(moving):
    source, edit = moving
    consistent = warp_error(edit, source, flow_method="dis")
    shuffled = warp_error(edit[torch.tensor([0, 3, 1, 4, 2])], source, flow_method="dis")
    assert consistent < 1e-4
    assert shuffled > 10 * consistent


def test_edit_at_another_size_is_resized_to_the_source(moving):
    source, edit = moving
    flows = translation_flows(FRAMES, SIZE, SIZE, STEP)
    # The same moving texture rendered at twice the resolution.
    big_edit = recolour(moving_texture(FRAMES, 2 * SIZE, 2 * SIZE, 2 * STEP, period=128))
    shuffled = warp_error(edit[torch.tensor([0, 3, 1, 4, 2])], source, flows=flows)
    assert warp_error(big_edit, source, flows=flows) < shuffled / 10


def test_warp_error_with_zero_flow_is_mean_squared_frame_difference():
    video = _frames(3, size=8, seed=5)
    zero = torch.zeros(2, 2, 8, 8)
    expected = ((video[1:] - video[:-1]) ** 2).mean(dim=(1, 2, 3)).mean().item()
    assert warp_error(video, video, flows=(zero, zero)) == pytest.approx(expected, rel=1e-5)


def test_occluded_pixels_do_not_count():
    # Frame 1 is frame 0 moved right by one pixel, except column 3 where the backward flow
    # disagrees (an occlusion) and the edit is garbage: the garbage must be ignored.
    frame = _frames(1, size=6, seed=6)[0]
    nxt = torch.roll(frame, 1, dims=-1)
    nxt[:, :, 3] = 1 - nxt[:, :, 3]
    forward, backward = translation_flows(2, 6, 6, 1.0)
    backward[0, 0, :, 3] = 2.0
    assert warp_error(torch.stack([frame, nxt]), torch.stack([frame, frame]), flows=(forward, backward)) < 1e-10


def test_non_occlusion_mask_forward_backward_check_and_image_border():
    forward, backward = translation_flows(2, 3, 6, 1.0)
    backward[0, 0, :, 3] = 2.0  # x=2 lands on column 3, whose backward flow does not lead back
    mask = non_occlusion_mask(forward, backward)[0]
    expected = torch.tensor([True, True, False, True, True, False])  # x=5 leaves the image
    assert torch.equal(mask, expected.expand(3, 6))


def test_non_occlusion_mask_motion_boundary():
    forward = torch.zeros(1, 2, 3, 8)
    forward[0, 0, :, :3], forward[0, 0, :, 3:] = 1.0, 3.0  # a step in the flow between x=2 and x=3
    backward = torch.zeros(1, 2, 3, 8)
    backward[0, 0, :, :6], backward[0, 0, :, 6:] = -1.0, -3.0  # consistent everywhere it is hit
    mask = non_occlusion_mask(forward, backward)[0]
    # x=2: boundary (|grad f|^2 = 4); x>=5: x+3 leaves the image.
    expected = torch.tensor([True, True, False, True, True, False, False, False])
    assert torch.equal(mask, expected.expand(3, 8))


def test_mismatched_inputs_raise(moving):
    source, edit = moving
    with pytest.raises(ValueError, match="number of frames"):
        warp_error(edit[:-1], source, flows=translation_flows(FRAMES, SIZE, SIZE, STEP))
    with pytest.raises(ValueError, match="flows"):
        warp_error(edit, source, flows=translation_flows(FRAMES - 1, SIZE, SIZE, STEP))
    with pytest.raises(ValueError):
        warp_error(edit[0], source)


# ----------------------------------------------------------------------------- Sedit, Scores


def test_edit_score_formula():
    assert edit_score(0.2805, 0.00492) == pytest.approx(57.01, abs=0.01)
    with pytest.raises(ValueError):
        edit_score(0.3, 0.0)
    with pytest.raises(ValueError):
        edit_score(0.3, -1e-3)


def test_scores_table_units():
    scores = Scores(clip_t=0.2805, clip_f=0.95, e_warp=0.00492, s_edit=edit_score(0.2805, 0.00492))
    table = scores.to_table_units()
    assert table["clip_t"] == pytest.approx(28.05)
    assert table["clip_f"] == pytest.approx(95.0)
    assert table["e_warp"] == pytest.approx(4.92)
    assert table["s_edit"] == pytest.approx(57.01, abs=0.01)
    assert table["pick_score"] is None
    assert scores.as_dict() == dict(clip_t=0.2805, clip_f=0.95, e_warp=0.00492, s_edit=scores.s_edit, pick_score=None)


def test_evaluate_video_combines_the_metrics(clip_path, clip, moving):
    source, edit = moving
    edit = edit[..., :32, :32].contiguous()
    source = source[..., :32, :32].contiguous()
    flows = translation_flows(FRAMES, 32, 32, STEP)
    shuffled_edit = edit[torch.tensor([0, 3, 1, 4, 2])]
    scores = evaluate_video(shuffled_edit, source, PROMPT, clip_model=clip_path, pick_model=clip, flows=flows)
    assert scores.clip_t == pytest.approx(clip_text_score(shuffled_edit, PROMPT, clip), abs=1e-6)
    assert scores.clip_f == pytest.approx(clip_frame_score(shuffled_edit, clip, pairs="all"), abs=1e-6)  # the default
    consecutive = evaluate_video(shuffled_edit, source, PROMPT, clip_model=clip, pick_model=None, flows=flows, frame_pairs="consecutive")
    assert consecutive.clip_f == pytest.approx(clip_frame_score(shuffled_edit, clip, pairs="consecutive"), abs=1e-6)
    assert consecutive.clip_f != pytest.approx(scores.clip_f, abs=1e-6)
    assert scores.e_warp == pytest.approx(warp_error(shuffled_edit, source, flows=flows))
    assert scores.s_edit == pytest.approx(scores.clip_t / scores.e_warp)
    assert scores.pick_score == pytest.approx(pick_score(shuffled_edit, PROMPT, clip), rel=1e-5)

    skipped = evaluate_video(edit, source, PROMPT, clip_model=clip, pick_model=None, flows=flows)
    assert skipped.pick_score is None
    assert math.isfinite(skipped.s_edit) or skipped.s_edit == math.inf


def test_metrics_module_exports():
    for name in ("clip_text_score", "clip_frame_score", "warp_error", "edit_score", "pick_score", "load_clip", "evaluate_video"):
        assert callable(getattr(metrics, name))
