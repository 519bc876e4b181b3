"""Evaluation metrics used by text-to-video editing papers.

All functions take videos as (F, 3, H, W) float tensors with values in [0, 1] and return
plain Python floats in *raw* units; :meth:`Scores.to_table_units` gives the scaling the
papers print.

- CLIP-T (:func:`clip_text_score`): mean cosine between each frame's CLIP image embedding
  and the prompt's text embedding (tables: x100).
- CLIP-F (:func:`clip_frame_score`): mean cosine between the CLIP embeddings of all ordered
  pairs of distinct frames (the paper's "all frames", LOVEU-TGVE's evaluation; tables: x100), or
  of consecutive frames (``pairs="consecutive"``).
- Ewarp (:func:`warp_error`): flow warping error of Lai et al. (ECCV 2018), with the flow of
  the *source* video (tables: x1000).
- Sedit (:func:`edit_score`): CLIP-T / Ewarp on raw values.
- PickScore (:func:`pick_score`): Kirstain et al.'s preference model, ``logit_scale.exp() * cos``.

CLIP-like models are given as a hub id, a local folder, or an already loaded
``(model, processor)`` tuple; :func:`load_clip` loads and caches them.

Frames reach CLIP as in LOVEU-TGVE-2023's official evaluation (``scripts/run_eval.py``): 8-bit
RGB, resized to 480x480 with PIL's bicubic filter (its ``Image.resize`` default), then the
model's CLIP processor with its PIL backend (shortest side to the model's size, bicubic, centre
crop, normalise). Remaining differences from that script:

- it reads the submitted frames back from JPEG files; here frames are rounded to 8 bits but not
  JPEG-compressed, so its scores of the same edit differ by the JPEG loss;
- CLIP-T: it averages ``logit_scale.exp() * cos`` (100 * cos for CLIP ViT-L/14); here the raw
  cosine, which :meth:`Scores.to_table_units` multiplies by 100 (the same number);
- PickScore: it loads ``pickapic-anonymous/PickScore_v1``, the review-time name of the
  checkpoint; the default here is its authors' name for it, ``yuvalkirstain/PickScore_v1``;
- it takes cosines in float32; here in float64.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..flow import estimate_flow
from ..hub import hub_kwargs
from .options import DEFAULT_CLIP_MODEL, DEFAULT_FRAME_PAIRS, DEFAULT_PICK_MODEL, DEFAULT_PICK_PROCESSOR, FRAME_PAIRS  # noqa: F401

#: (width, height) every frame is resized to before the CLIP processor, as LOVEU-TGVE's evaluation does.
EVAL_FRAME_SIZE = (480, 480)


# A model argument: hub id, local folder, or a loaded (CLIPModel, CLIPProcessor) pair.
ModelSpec = Union[str, os.PathLike, tuple]


class MetricModelError(RuntimeError):
    """A metric's model could not be loaded (offline, missing folder, broken files)."""


# --------------------------------------------------------------------------- loading


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_clip(
    model_id_or_path: str | os.PathLike,
    processor_id_or_path: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
) -> tuple[Any, Any]:
    """Load a ``CLIPModel`` and its ``CLIPProcessor`` (cached: repeated calls reuse them).

    Args:
        model_id_or_path: hub id or local folder of the model.
        processor_id_or_path: where the processor lives (default: with the model). PickScore,
            for example, uses the processor of the CLIP it was fine-tuned from.
        device: where the model goes (default: CUDA when available, else the CPU).

    Returns:
        ``(model, processor)``, the model in eval mode on ``device``.

    Raises:
        MetricModelError: the files are neither local nor cached and cannot be downloaded.
    """
    device = torch.device(device) if device is not None else _default_device()
    processor = processor_id_or_path if processor_id_or_path is not None else model_id_or_path
    return _load_clip_cached(str(model_id_or_path), str(processor), str(device))


@functools.lru_cache(maxsize=2)  # CLIP-L and PickScore (ViT-H) together are ~5 GB: keep it small
def _load_clip_cached(model_name: str, processor_name: str, device: str) -> tuple[Any, Any]:
    from transformers import CLIPModel, CLIPProcessor, __version__

    # The official evaluation ran the processor on PIL (transformers 4's default); transformers 5
    # defaults to a torchvision backend whose resize differs slightly, so ask for PIL there.
    pil_backend = {"backend": "pil"} if int(__version__.split(".")[0]) >= 5 else {}

    for name in {model_name, processor_name}:
        # A path-looking name that does not exist would otherwise be sent to the hub as a
        # repo id and fail with a confusing message.
        if (Path(name).is_absolute() or name.startswith((".", "~"))) and not Path(name).expanduser().exists():
            raise MetricModelError(
                f"Model folder {name!r} does not exist. Pass a folder holding the model's config.json, "
                f"weights and processor files, e.g. one made with `hf download <hub id> --local-dir {name}`."
            )

    def local_or_id(name: str) -> str:
        folder = Path(name).expanduser()
        return str(folder) if folder.is_dir() else name

    try:
        model_folder = Path(local_or_id(model_name))
        # Prefer safetensors; only insist on them where we can see they are there.
        use_safetensors = True if model_folder.is_dir() and any(model_folder.glob("*.safetensors")) else None
        # Offline: a cached model loads from the cache at once, a missing one fails at once (no retries).
        model = CLIPModel.from_pretrained(local_or_id(model_name), use_safetensors=use_safetensors,
                                          **hub_kwargs(local_or_id(model_name), "config.json", "the CLIP model"))
        processor = CLIPProcessor.from_pretrained(local_or_id(processor_name), **pil_backend,
                                                  **hub_kwargs(local_or_id(processor_name), "", "the CLIP processor"))
    except Exception as error:  # OSError, HFValidationError, EnvironmentError... when offline
        reason = (str(error).strip().splitlines() or [""])[0].rstrip(".")  # one line, so the advice below shows
        raise MetricModelError(
            f"Could not load the CLIP model {model_name!r} (processor {processor_name!r}): "
            f"{error.__class__.__name__}: {reason}. Download it while online "
            f"(`hf download {model_name}`, and the processor likewise) so it is in the Hugging Face cache, "
            f"or pass a local folder holding the model's config.json, weights and processor files."
        ) from error
    return model.eval().to(device), processor


def _resolve(spec: ModelSpec, processor: str | os.PathLike | None, device) -> tuple[Any, Any]:
    """``(model, processor)`` from an id/path (loaded, cached) or an already loaded pair (as is)."""
    if isinstance(spec, (tuple, list)):
        if len(spec) != 2:
            raise TypeError("a loaded model must be given as a (model, processor) pair")
        return spec[0], spec[1]
    if isinstance(spec, (str, os.PathLike)):
        return load_clip(spec, processor, device)
    raise TypeError(f"model must be a hub id, a local path or a (model, processor) pair, got {type(spec).__name__}")


# --------------------------------------------------------------------------- CLIP embeddings


def _check_video(frames: torch.Tensor, name: str = "frames") -> None:
    if not isinstance(frames, torch.Tensor) or not frames.is_floating_point():
        raise ValueError(f"{name} must be a float tensor (F, 3, H, W) with values in [0, 1]")
    if frames.ndim != 4 or frames.shape[1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"{name} must have shape (F, 3, H, W), got {tuple(frames.shape)}")


def _features(output) -> torch.Tensor:
    # transformers 4 returns the projected embeddings; 5 returns an output whose
    # pooler_output holds them.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _model_device_dtype(model) -> tuple[torch.device, torch.dtype]:
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


def _eval_images(frames: torch.Tensor) -> list[Image.Image]:
    """(F, 3, H, W) in [0, 1] -> 8-bit RGB images of :data:`EVAL_FRAME_SIZE`, resized as LOVEU-TGVE's
    evaluation resizes the frames it reads (PIL, bicubic), whatever their size or aspect."""
    arrays = (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)).resize(EVAL_FRAME_SIZE, Image.Resampling.BICUBIC) for a in arrays]


@torch.no_grad()
def _image_embeds(frames: torch.Tensor, model, processor, batch_size: int) -> torch.Tensor:
    """(F, 3, H, W) in [0, 1] -> (F, D) float64 unit-norm CLIP image embeddings."""
    device, dtype = _model_device_dtype(model)
    images = _eval_images(frames)  # then the processor resizes, crops and normalises as in training
    embeds = []
    for start in range(0, len(images), batch_size):
        inputs = processor(images=images[start : start + batch_size], return_tensors="pt")
        pixels = inputs["pixel_values"].to(device=device, dtype=dtype)
        embeds.append(_features(model.get_image_features(pixel_values=pixels)).double().cpu())
    return F.normalize(torch.cat(embeds), dim=-1)


@torch.no_grad()
def _text_embed(prompt: str, model, processor) -> torch.Tensor:
    """prompt -> (D,) float64 unit-norm CLIP text embedding."""
    device, _ = _model_device_dtype(model)
    max_length = model.config.text_config.max_position_embeddings  # 77 for CLIP
    inputs = processor(text=[prompt], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    inputs = {key: value.to(device) for key, value in inputs.items() if key in ("input_ids", "attention_mask")}
    return F.normalize(_features(model.get_text_features(**inputs)).double().cpu(), dim=-1)[0]


def _frame_similarity(embeds: torch.Tensor, pairs: str) -> float:
    """Mean cosine between unit embeddings (F, D): consecutive or all ordered distinct pairs."""
    count = embeds.shape[0]
    if count < 2:
        raise ValueError("frame consistency needs at least 2 frames")
    if pairs == "consecutive":
        return (embeds[:-1] * embeds[1:]).sum(-1).mean().item()
    if pairs == "all":
        similarity = embeds @ embeds.T
        # The matrix is symmetric, so ordered and unordered pairs give the same mean.
        return ((similarity.sum() - similarity.diagonal().sum()) / (count * (count - 1))).item()
    raise ValueError(f"pairs must be one of {', '.join(map(repr, FRAME_PAIRS))}, got {pairs!r}")


# --------------------------------------------------------------------------- CLIP metrics


def clip_text_score(
    frames: torch.Tensor,
    prompt: str,
    model: ModelSpec = DEFAULT_CLIP_MODEL,
    *,
    device: torch.device | str | None = None,
    batch_size: int = 16,
) -> float:
    """CLIP-T: mean over frames of cos(CLIP image embedding, prompt embedding).

    Args:
        frames: (F, 3, H, W) float in [0, 1].
        prompt: the edit prompt.
        model: hub id, local folder, or a loaded ``(CLIPModel, CLIPProcessor)`` pair.
        device: where a model loaded here runs (loaded pairs stay where they are).
        batch_size: frames per forward pass.

    Returns:
        the raw score in [-1, 1] (papers print it x100).
    """
    _check_video(frames)
    clip, processor = _resolve(model, None, device)
    images = _image_embeds(frames, clip, processor, batch_size)
    return (images @ _text_embed(prompt, clip, processor)).mean().item()


def clip_frame_score(
    frames: torch.Tensor,
    model: ModelSpec = DEFAULT_CLIP_MODEL,
    *,
    pairs: str = DEFAULT_FRAME_PAIRS,
    device: torch.device | str | None = None,
    batch_size: int = 16,
) -> float:
    """CLIP-F, frame consistency: mean cosine between the frames' CLIP image embeddings.

    Args:
        frames: (F, 3, H, W) float in [0, 1], F >= 2.
        model: hub id, local folder, or a loaded ``(CLIPModel, CLIPProcessor)`` pair.
        pairs: ``"all"`` ordered pairs of distinct frames (default: the paper's "all frames" and
            LOVEU-TGVE's evaluation), or ``"consecutive"`` frames.
        device: where a model loaded here runs.
        batch_size: frames per forward pass.
    """
    _check_video(frames)
    clip, processor = _resolve(model, None, device)
    return _frame_similarity(_image_embeds(frames, clip, processor, batch_size), pairs)


def pick_score(
    frames: torch.Tensor,
    prompt: str,
    model: ModelSpec = DEFAULT_PICK_MODEL,
    processor: str | os.PathLike | None = DEFAULT_PICK_PROCESSOR,
    *,
    device: torch.device | str | None = None,
    batch_size: int = 16,
) -> float:
    """PickScore averaged over frames: ``logit_scale.exp() * cos(image, text)`` (~ 20 for good images).

    Args:
        frames: (F, 3, H, W) float in [0, 1].
        prompt: the edit prompt.
        model: PickScore's CLIPModel as hub id or folder, or a loaded ``(model, processor)`` pair.
        processor: where the processor lives (PickScore uses the LAION CLIP-H one); ignored
            for a loaded pair.
    """
    _check_video(frames)
    clip, clip_processor = _resolve(model, processor, device)
    images = _image_embeds(frames, clip, clip_processor, batch_size)
    cosine = images @ _text_embed(prompt, clip, clip_processor)
    return (clip.logit_scale.exp().item() * cosine).mean().item()


# --------------------------------------------------------------------------- warping error


def _sample(image: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinearly sample ``image`` at ``p + flow(p)`` for every pixel p.

    Args:
        image: (N, C, H, W).
        flow: (N, 2, H, W) in pixels (channel 0 = x).

    Returns:
        (N, C, H, W) sampled values and an (N, H, W) bool mask of positions inside the image.
    """
    _, _, height, width = flow.shape
    ys, xs = torch.meshgrid(
        torch.arange(height, device=flow.device, dtype=flow.dtype),
        torch.arange(width, device=flow.device, dtype=flow.dtype),
        indexing="ij",
    )
    x = xs + flow[:, 0]
    y = ys + flow[:, 1]
    # Pixel centres sit at integer coordinates 0..W-1, which align_corners=True maps to -1..1.
    grid = torch.stack((2 * x / (width - 1) - 1, 2 * y / (height - 1) - 1), dim=-1)
    sampled = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)
    inside = (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
    return sampled, inside


def non_occlusion_mask(forward: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
    """Pixels of frame t whose forward flow is trustworthy (Ruder et al. 2016, Lai et al. 2018).

    A pixel x is dropped when
    - its target x + f(x) leaves the image;
    - forward-backward consistency fails: with b' = b sampled at x + f(x),
      ``|f + b'|^2 > 0.01 (|f|^2 + |b'|^2) + 0.5``;
    - it lies on a motion boundary: ``|grad f|^2 > 0.01 |f|^2 + 0.002``, with forward
      differences as in Lai et al.'s code. The gradient is taken of the flow defined on the
      evaluated pixel grid (here f, the flow that drives the warp), which is how both
      reference implementations apply the rule; where the check above passes, b' ~ -f, so the
      variant with grad b' mostly differs at pixels that check already drops.

    Args:
        forward: (N, 2, H, W) flows t -> t+1 in pixels.
        backward: (N, 2, H, W) flows t+1 -> t in pixels.

    Returns:
        (N, H, W) bool, True where the pixel counts.
    """

    def squared(v: torch.Tensor) -> torch.Tensor:  # |v|^2 over the (x, y) channel
        return (v**2).sum(dim=1)

    backward_at_target, inside = _sample(backward, forward)
    occluded = squared(forward + backward_at_target) > 0.01 * (squared(forward) + squared(backward_at_target)) + 0.5
    grad_x = torch.zeros_like(forward)
    grad_y = torch.zeros_like(forward)
    grad_x[..., :, :-1] = forward[..., :, :-1] - forward[..., :, 1:]
    grad_y[..., :-1, :] = forward[..., :-1, :] - forward[..., 1:, :]
    boundary = squared(grad_x) + squared(grad_y) > 0.01 * squared(forward) + 0.002
    return inside & ~occluded & ~boundary


def warp_error(
    edited: torch.Tensor,
    source: torch.Tensor,
    *,
    flow_method: str = "raft",
    flows: tuple[torch.Tensor, torch.Tensor] | None = None,
    device: torch.device | str | None = None,
    raft_model: torch.nn.Module | None = None,
) -> float:
    """Ewarp: flow warping error of the edit, measured with the source video's motion.

    For each t, edited frame t+1 is warped back onto frame t along the source's forward flow
    f_t (bilinear), and the squared RGB difference is averaged over the pixels that
    :func:`non_occlusion_mask` keeps: ``sum(mask * err^2) / (3 * sum(mask))``. The result is the
    mean over the F-1 pairs (pairs with no valid pixel are skipped).

    If the edit's size differs from the source's, the edit is resized (bilinear, antialiased)
    to the source size: the flow and its pixel-unit thresholds then stay as estimated.

    Args:
        edited: (F, 3, H', W') float in [0, 1].
        source: (F, 3, H, W) float in [0, 1], same F.
        flow_method: ``"raft"`` or ``"dis"`` (see :func:`flatten_video.flow.estimate_flow`);
            the backward flow is the forward flow of the reversed video.
        flows: precomputed ``(forward, backward)``, each (F-1, 2, H, W) at the source size:
            ``forward[t]`` maps t -> t+1 and ``backward[t]`` maps t+1 -> t.
        device: where the computation (and RAFT) runs; default: the source's device.
        raft_model: optional ready RAFT module for ``flow_method="raft"``.

    Returns:
        the raw error (papers print it x1000).
    """
    _check_video(edited, "edited")
    _check_video(source, "source")
    if edited.shape[0] != source.shape[0]:
        raise ValueError(f"edited and source videos need the same number of frames, got {edited.shape[0]} and {source.shape[0]}")
    count, _, height, width = source.shape
    if count < 2 or height < 2 or width < 2:
        raise ValueError(f"warping error needs at least 2 frames of at least 2x2 pixels, got {tuple(source.shape)}")
    device = torch.device(device) if device is not None else source.device
    edited = edited.to(device=device, dtype=torch.float32)
    if edited.shape[-2:] != source.shape[-2:]:
        edited = F.interpolate(edited, size=(height, width), mode="bilinear", align_corners=False, antialias=True)

    if flows is None:
        options = dict(method=flow_method, device=device, raft_model=raft_model, progress=False)
        forward = estimate_flow(source, **options)
        # Flow of the reversed video: reversed[k] maps frame F-1-k -> F-2-k, so flipping it
        # back puts the flow t+1 -> t at index t.
        backward = estimate_flow(source.flip(0), **options).flip(0)
    else:
        forward, backward = flows
    expected = (count - 1, 2, height, width)
    if tuple(forward.shape) != expected or tuple(backward.shape) != expected:
        raise ValueError(f"flows must both have shape {expected}, got {tuple(forward.shape)} and {tuple(backward.shape)}")

    errors = []
    for t in range(count - 1):  # one pair at a time keeps memory flat for long HD videos
        f_t = forward[t : t + 1].to(device=device, dtype=torch.float32)
        b_t = backward[t : t + 1].to(device=device, dtype=torch.float32)
        mask = non_occlusion_mask(f_t, b_t).float()
        warped, _ = _sample(edited[t + 1 : t + 2], f_t)
        squared_error = ((warped - edited[t : t + 1]) ** 2).sum(dim=1)
        valid = mask.sum()
        if valid > 0:
            errors.append((squared_error * mask).sum().item() / (3 * valid.item()))
    if not errors:
        warnings.warn("warp_error: every pixel is occluded in every frame pair; returning NaN")
        return math.nan
    return sum(errors) / len(errors)


def edit_score(clip_t: float, e_warp: float) -> float:
    """Sedit = CLIP-T / Ewarp on raw values (CLIP-T 0.2805, Ewarp 0.00492 -> 57.01).

    Raises:
        ValueError: ``e_warp <= 0``.
    """
    if not e_warp > 0:
        raise ValueError(f"Ewarp must be positive to form Sedit, got {e_warp}")
    return clip_t / e_warp


# --------------------------------------------------------------------------- all together


@dataclass
class Scores:
    """Raw metric values of one edited video (see :meth:`to_table_units` for the papers' scale)."""

    clip_t: float
    clip_f: float
    e_warp: float
    s_edit: float
    pick_score: Optional[float] = None

    def as_dict(self) -> dict[str, Optional[float]]:
        """Raw values, keyed by field name."""
        return dataclasses.asdict(self)

    def to_table_units(self) -> dict[str, Optional[float]]:
        """Values as papers print them: CLIP-T x100, CLIP-F x100, Ewarp x1000.

        Sedit and PickScore are printed as they are: tables list Sedit as the ratio of the raw
        values (CLIP-T 28.05 and Ewarp 4.92 go with Sedit 57.01).
        """
        return {
            "clip_t": self.clip_t * 100,
            "clip_f": self.clip_f * 100,
            "e_warp": self.e_warp * 1000,
            "s_edit": self.s_edit,
            "pick_score": self.pick_score,
        }


def evaluate_video(
    edited: torch.Tensor,
    source: torch.Tensor,
    prompt: str,
    *,
    clip_model: ModelSpec = DEFAULT_CLIP_MODEL,
    pick_model: ModelSpec | None = DEFAULT_PICK_MODEL,
    pick_processor: str | os.PathLike | None = DEFAULT_PICK_PROCESSOR,
    flow_method: str = "raft",
    flows: tuple[torch.Tensor, torch.Tensor] | None = None,
    frame_pairs: str = DEFAULT_FRAME_PAIRS,
    device: torch.device | str | None = None,
    batch_size: int = 16,
) -> Scores:
    """All metrics of one edit; each frame goes through CLIP once for both CLIP-T and CLIP-F.

    Args:
        edited: (F, 3, H', W') float in [0, 1], the edit.
        source: (F, 3, H, W) float in [0, 1], the source video (its flow drives Ewarp).
        prompt: the edit prompt.
        clip_model: CLIP for CLIP-T / CLIP-F (id, folder, or loaded pair).
        pick_model: PickScore model (id, folder, or loaded pair), or None to skip it.
        pick_processor: processor location for an id/folder ``pick_model``.
        flow_method, flows: see :func:`warp_error`.
        frame_pairs: pairs for CLIP-F, ``"all"`` (default) or ``"consecutive"``, see :func:`clip_frame_score`.
        device: where models loaded here and the warping run.
        batch_size: frames per CLIP forward pass.
    """
    _check_video(edited, "edited")
    clip, processor = _resolve(clip_model, None, device)
    images = _image_embeds(edited, clip, processor, batch_size)
    clip_t = (images @ _text_embed(prompt, clip, processor)).mean().item()
    clip_f = _frame_similarity(images, frame_pairs)
    e_warp = warp_error(edited, source, flow_method=flow_method, flows=flows, device=device)
    # A perfectly static edit of a static video has Ewarp == 0: report Sedit as inf, not a crash.
    s_edit = edit_score(clip_t, e_warp) if e_warp > 0 else (math.inf if e_warp == 0 else math.nan)
    pick = None
    if pick_model is not None:
        pick = pick_score(edited, prompt, pick_model, pick_processor, device=device, batch_size=batch_size)
    return Scores(clip_t=clip_t, clip_f=clip_f, e_warp=e_warp, s_edit=s_edit, pick_score=pick)
