"""One function per input rule, so each rule has one owner and one message.

Public entries (the pipelines' ``check_inputs``, :class:`~flatten_video.app.settings.EditSettings`)
call these with the name their caller knows the value by (``inject_steps`` in Python,
``--inject-steps`` on the command line); lower layers trust their callers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def check_choice(name: str, value, choices: Iterable) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(str, choices))}")


def check_at_least(name: str, value, minimum: int) -> None:
    """``value`` is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value!r}")


def check_at_most(name: str, value, maximum: int, why: str = "") -> None:
    """``value`` is at most ``maximum``; ``why`` says where the limit comes from."""
    if value > maximum:
        raise ValueError(f"{name} must be at most {maximum}{f' ({why})' if why else ''}, got {value!r}")


def check_finite(name: str, value) -> None:
    """A real number: NaN and infinities pass every comparison test silently, so name them."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def check_positive_number(name: str, value) -> None:
    check_finite(name, value)
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")


def check_text(name: str, text: str) -> None:
    """Text that tokenizers can read: valid Unicode (a terminal in another encoding can hand
    Python undecodable bytes, kept as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not valid UTF-8 text; check the terminal's or the file's encoding") from None


def check_num_frames(name: str, count: int) -> None:
    if count < 2:
        raise ValueError(f"{name} must be at least 2 frames (FLATTEN follows motion between frames), got {count}")


def check_temporal_fit(name: str, count: int, temporal_factor: int) -> None:
    """``count`` source frames fit a VAE that encodes ``temporal_factor`` (k) frames per latent
    frame after the first: k*m + 1 of them (any count for k = 1)."""
    if (count - 1) % temporal_factor:
        low = count - (count - 1) % temporal_factor
        fits = " or ".join(str(n) for n in (low, low + temporal_factor) if n >= 2)
        raise ValueError(f"{name} {count} does not fit a VAE that encodes {temporal_factor} source frames per latent "
                         f"frame after the first: use {temporal_factor}k+1 frames ({fits})")


def check_overlap_fit(name: str, overlap: int, temporal_factor: int) -> None:
    """An overlap of source frames that is a whole number of latent frames: a multiple of k."""
    if overlap % temporal_factor:
        raise ValueError(f"{name} {overlap} is not a whole number of latent frames: use a multiple of {temporal_factor} "
                         "source frames")


#: The smallest frame side: 8 latents of 8 pixels. OpenCV's DIS flow fails below 12 pixels, and
#: Stable Diffusion draws nothing recognisable on a few latents.
MIN_SIDE = 64


def check_multiple_of_8(name: str, value: int) -> None:
    """Frame sides: the VAE downsamples by 8 (deeper U-Net levels round up)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 8 or value % 8:
        raise ValueError(f"{name} must be a positive multiple of 8, got {value!r}")


def check_frame_side(name: str, value: int) -> None:
    """A side of the frames an edit works on: a multiple of 8 of at least :data:`MIN_SIDE` pixels."""
    check_multiple_of_8(name, value)
    if value < MIN_SIDE:
        raise ValueError(f"{name} must be at least {MIN_SIDE} pixels (optical flow and the U-Net need a few latents), got {value}")


def check_fraction_window(start: float, end: float, start_name: str, end_name: str) -> None:
    """A part of the sampling steps given as fractions: 0 <= start <= end <= 1."""
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"{start_name} and {end_name} must satisfy 0 <= start <= end <= 1, got {start} and {end}")


def check_inject_steps(inject_steps: int, steps: int, inject_name: str = "inject_steps", steps_name: str = "num_inference_steps") -> None:
    if isinstance(inject_steps, bool) or not isinstance(inject_steps, int) or not 0 <= inject_steps <= steps:
        raise ValueError(f"{inject_name} must be between 0 and {steps_name} ({steps}), got {inject_steps!r}")


def check_windows(window: int, overlap: int, anchors: int, window_name: str = "window", overlap_name: str = "overlap",
                  anchors_name: str = "anchors") -> None:
    """The rules of a co-denoising window setting on their own (the clip's length aside): W is 0
    or at least 2, 0 <= O < W, A >= 0."""
    check_at_least(anchors_name, anchors, 0)
    check_at_least(overlap_name, overlap, 0)
    if window == 0:
        return
    check_at_least(window_name, window, 2)
    if overlap >= window:
        raise ValueError(f"{overlap_name} must be smaller than {window_name} ({window}), got {overlap}")


def check_anchor_count(num_frames: int, anchors: int, name: str = "anchors") -> None:
    """Anchor frames are frames of the clip: no more of them than it has."""
    if anchors > num_frames:
        raise ValueError(f"{name} ({anchors}) must not exceed the clip's {num_frames} frames")
