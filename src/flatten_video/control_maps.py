"""Condition maps for ControlNets, one per source frame (docs/architecture.md, Plug-ins).

``canny`` runs OpenCV (no weights); ``depth``, ``hed``, ``lineart`` and ``openpose`` run the
``controlnet_aux`` detectors, whose weights come from the Hugging Face hub the first time. Maps
are (F, 3, H, W) float tensors in [0, 1] at the frames' size, as diffusers' ControlNets take them.
"""

from __future__ import annotations

import numpy as np
import torch

from .choices import CONTROL_KINDS
from .validation import check_choice

#: controlnet_aux detector class and hub repository of its weights, per kind.
_DETECTORS = {
    "depth": ("MidasDetector", "lllyasviel/Annotators"),
    "hed": ("HEDdetector", "lllyasviel/Annotators"),
    "lineart": ("LineartDetector", "lllyasviel/Annotators"),
    "openpose": ("OpenposeDetector", "lllyasviel/Annotators"),
}


class DetectorUnavailable(RuntimeError):
    """A condition detector cannot be loaded (controlnet_aux missing, or its weights)."""


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(F, 3, H, W) in [0, 1] -> (F, H, W, 3) uint8."""
    return (frames.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)


def _to_maps(images: list[np.ndarray]) -> torch.Tensor:
    """(H, W) or (H, W, 3) uint8 maps -> (F, 3, H, W) float in [0, 1]."""
    stacked = np.stack([image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2) for image in images])
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).float() / 255


def canny_maps(frames: torch.Tensor, low: int = 100, high: int = 200) -> torch.Tensor:
    """Canny edges of every frame, (F, 3, H, W) in [0, 1] -> (F, 3, H, W) in {0, 1}, white edges.

    Args:
        low, high: OpenCV's hysteresis thresholds on the 8-bit gray image (ControlNet 1.1's 100, 200).
    """
    import cv2

    gray = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in _to_uint8(frames)]
    return _to_maps([cv2.Canny(image, low, high) for image in gray])


def detector_maps(frames: torch.Tensor, kind: str) -> torch.Tensor:
    """Maps of a ``controlnet_aux`` detector, resized back to the frames' size.

    Raises:
        DetectorUnavailable: controlnet_aux is not installed, or its weights cannot be had.
    """
    check_choice("condition kind", kind, tuple(_DETECTORS))
    name, repository = _DETECTORS[kind]
    try:
        import controlnet_aux
    except ImportError as error:
        raise DetectorUnavailable(
            f"the {kind} condition needs controlnet_aux: pip install controlnet-aux (or give --control-video)"
        ) from error
    try:
        detector = getattr(controlnet_aux, name).from_pretrained(repository)
    except Exception as error:  # offline, no cache, a changed hub layout...
        reason = " ".join(str(error).split())
        raise DetectorUnavailable(
            f"the {kind} detector's weights ({repository}) could not be loaded: connect once to download them, "
            f"or give a condition video with --control-video ({reason})"
        ) from error
    import PIL.Image

    height, width = frames.shape[-2:]
    maps = [np.asarray(detector(PIL.Image.fromarray(frame)).convert("RGB").resize((width, height))) for frame in _to_uint8(frames)]
    return _to_maps(maps)


def control_maps(frames: torch.Tensor, kind: str, canny_low: int = 100, canny_high: int = 200) -> torch.Tensor:
    """The ``kind`` condition maps of the frames (F, 3, H, W) in [0, 1]."""
    check_choice("condition kind", kind, CONTROL_KINDS)
    return canny_maps(frames, canny_low, canny_high) if kind == "canny" else detector_maps(frames, kind)
