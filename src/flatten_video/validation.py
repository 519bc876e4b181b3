"""One function per input rule, so each rule has one owner and one message.

Public entries (the pipelines' ``check_inputs``, :class:`~flatten_video.app.settings.EditSettings`)
call these with the name their caller knows the value by (``inject_steps`` in Python,
``--inject-steps`` on the command line); lower layers trust their callers.
"""

from __future__ import annotations

from collections.abc import Iterable


def check_choice(name: str, value, choices: Iterable) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(str, choices))}")


def check_at_least(name: str, value, minimum: int) -> None:
    """``value`` is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value!r}")


def check_positive_number(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")


def check_num_frames(name: str, count: int) -> None:
    if count < 2:
        raise ValueError(f"{name} must be at least 2 frames (FLATTEN follows motion between frames), got {count}")


def check_multiple_of_8(name: str, value: int) -> None:
    """Frame sides: the VAE downsamples by 8 (deeper U-Net levels round up)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 8 or value % 8:
        raise ValueError(f"{name} must be a positive multiple of 8, got {value!r}")


def check_fraction_window(start: float, end: float, start_name: str, end_name: str) -> None:
    """A part of the sampling steps given as fractions: 0 <= start <= end <= 1."""
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"{start_name} and {end_name} must satisfy 0 <= start <= end <= 1, got {start} and {end}")


def check_inject_steps(inject_steps: int, steps: int, inject_name: str = "inject_steps", steps_name: str = "num_inference_steps") -> None:
    if isinstance(inject_steps, bool) or not isinstance(inject_steps, int) or not 0 <= inject_steps <= steps:
        raise ValueError(f"{inject_name} must be between 0 and {steps_name} ({steps}), got {inject_steps!r}")
