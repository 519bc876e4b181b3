"""Where and how models run for the commands and the web UI: device, dtype, loading, error lines."""

from __future__ import annotations

import functools
import json
import pathlib

import torch

from ..flow import FlowWeightsUnavailable
from ..families import FAMILIES
from ..hub import HubUnavailable, hub_kwargs, is_hub_id
from ..models.attention_backends import check_attention_backend
from ..pipelines import FlattenMixin, FlattenPipeline, FlattenSDXLPipeline, ModelLoadError, pipeline_for_index
from ..pipelines.loading import (
    check_lora,
    dtype_kwargs,
    is_single_file,
    load_single_file,
    lora_misfit,
    lora_target,
    single_file_family,
)
from ..pipelines.pipeline_flatten_wan import check_second_guidance


#: Errors that are the user's input or environment, told in one line without a traceback.
USER_ERRORS = (ValueError, ModelLoadError, FlowWeightsUnavailable, HubUnavailable)


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def check_device(name: str | None) -> str:
    """The device to run on: ``name`` (checked to exist on this machine) or the best one."""
    if name is None:
        return default_device()
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown --device {name!r}; use cuda, cuda:N, mps or cpu") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = "" if torch.backends.cuda.is_built() else f" (this torch {torch.__version__} is a CPU build)"
            raise ValueError(f"--device {name}: no CUDA GPU is available{built}; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), cuda:0 to "
                             f"cuda:{torch.cuda.device_count() - 1}")
    elif device.type == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise ValueError(f"--device {name}: Apple's MPS is not available on this machine")
    elif device.type != "cpu":
        raise ValueError(f"unsupported --device {name!r}; use cuda, cuda:N, mps or cpu")
    return str(device)


def check_dtype(name: str | None, device: str) -> None:
    """Half precision on the CPU: diffusers warns it will fail and PyTorch lacks or crawls
    through its kernels, so refuse it up front."""
    if name == "float16" and torch.device(device).type == "cpu":
        raise ValueError("--dtype float16 does not run on the CPU; use float32 (default) or bfloat16")


def check_runtime(runtime, settings=None) -> str:
    """Everything about where and what runs that can fail before a model loads: the device, the
    dtype on it, the LoRA files, and whether the model, its ControlNets (``settings.controls``)
    and the schedule can be had. Returns the device to run on."""
    runtime.check()
    device = check_device(runtime.device)
    check_dtype(runtime.dtype, device)
    check_attention_backend(runtime.attention_backend, device)
    if runtime.compile and torch.device(device).type != "cuda":
        raise ValueError("--compile needs a CUDA GPU: on this device compiling costs more than it saves")
    for lora in runtime.lora:
        check_lora(lora)
        check_lora_fits(lora, runtime.model)
    if not is_single_file(runtime.model):  # a single file's base configs: load_single_file says what it lacks
        hub_kwargs(runtime.model, "model_index.json", "the model")
        check_model(runtime.model)
    if settings is not None:
        for (kind, _), name in zip(settings.controls, check_controlnets(runtime.model, settings.controls), strict=True):
            hub_kwargs(name, "config.json", f"the {kind} ControlNet")
            width = checkpoint_json(name, "config.json").get("cross_attention_dim")
            check_same_text_width(f"the {kind} ControlNet {name}", width, runtime.model)
        check_schedule(runtime.model, settings)
        check_experts(runtime.model, settings)
    return device


def check_experts(model: str, settings) -> None:
    """A second expert's guidance (``--guidance-2``) needs a checkpoint with two (Wan 2.2 A14B's
    ``transformer_2``); told from its ``model_index.json`` (nothing when it cannot be read)."""
    if settings.guidance_2 is None:
        return
    index = model_index(model)
    if index:
        check_second_guidance("--guidance-2", settings.guidance_2,
                              two_experts=index.get("transformer_2") not in (None, [None, None]))


def check_lora_fits(lora: str, model: str) -> None:
    """A LoRA trained on another family than the model's is one line before any weights load
    (loading it would end in dozens of size mismatches); nothing when either cannot be told."""
    target = lora_target(lora)
    if target is None or is_single_file(model):
        return
    denoiser, width = target
    family = FAMILIES[pipeline_class(model).family]
    if denoiser != family.denoiser:
        raise ValueError(f"the LoRA {lora} is for a {LORA_TARGETS[denoiser]}, and {model} is {family.label}")
    check_same_text_width(f"the LoRA {lora}", width, model)
    index = checkpoint_json(model, "model_index.json")
    entry = index.get(family.denoiser)
    config = checkpoint_json(model, f"{family.denoiser}/config.json")
    why = lora_misfit(lora, family.denoiser, entry[1], dict(config)) if isinstance(entry, list) and config else None
    if why:
        raise ValueError(f"the LoRA {lora} does not fit {model}: {why} (a LoRA trained on another model)")


#: What a LoRA of each denoiser was trained on, as messages say it.
LORA_TARGETS = {"unet": "Stable Diffusion U-Net", "transformer": "video transformer (Wan)"}


#: How messages name a Stable Diffusion family.
FAMILY_NAMES = {"sd15": "SD 1.x", "sd21": "SD 2.x", "sdxl": "SDXL"}


def check_same_text_width(what: str, width: int | None, model: str) -> None:
    """A plug-in (LoRA, ControlNet) whose cross-attention reads text of another width than the
    model's U-Net was made for another family: one line naming both (nothing when one is unknown)."""
    model_width = checkpoint_json(model, "unet/config.json").get("cross_attention_dim")
    if width is None or model_width is None or width == model_width:
        return
    plug_in, base = FAMILY_NAMES.get(BASE_BY_TEXT_WIDTH.get(width)), FAMILY_NAMES.get(BASE_BY_TEXT_WIDTH.get(model_width))
    raise ValueError(f"{what} is for {plug_in or 'another model'} (its cross-attention reads {width}-wide text); "
                     f"{model} is {base or 'a U-Net'} ({model_width})")


def check_model(model: str) -> None:
    """What the model's folder (or its cached or fetched configs) says before any weights load:
    a folder that does not exist or is no pipeline (a ControlNet, say), components its
    ``model_index.json`` names but the folder lacks, and a U-Net that is not text-to-image's
    (inpainting's 9 input channels). ``ValueError`` in one line."""
    path = pathlib.Path(model).expanduser()
    if not is_hub_id(model):
        if not path.exists():
            raise ValueError(f"no such folder: {model} (give a diffusers model folder, a .safetensors checkpoint or a hub id)")
        if path.is_dir() and not (path / "model_index.json").is_file():
            kind = checkpoint_json(str(path), "config.json").get("_class_name", "")
            if "ControlNet" in kind:
                raise ValueError(f"{model} is a ControlNet, not a base model: give it with --control KIND={model} "
                                 "beside a Stable Diffusion --model")
            raise ValueError(f"{model} is not a diffusers pipeline folder (no model_index.json)")
        if path.is_dir():
            index = checkpoint_json(str(path), "model_index.json")
            missing = [f"{name}/" for name, value in index.items() if isinstance(value, list) and len(value) == 2
                       and value[0] and not (path / name).is_dir()]
            if missing:
                raise ValueError(f"{model} lacks the folder{'s' if len(missing) > 1 else ''} {', '.join(missing)} that its "
                                 "model_index.json names")
    unet = checkpoint_json(model, "unet/config.json")
    channels = unet.get("in_channels", 4)
    if unet and channels != 4:
        kind = {9: "an inpainting checkpoint: latents, mask and masked image", 5: "a depth-to-image checkpoint",
                8: "an InstructPix2Pix checkpoint: latents and the source image"}.get(channels, "not a text-to-image U-Net")
        raise ValueError(f"{model}'s U-Net takes {channels} input channels ({kind}); FLATTEN edits with text-to-image "
                         "checkpoints, whose U-Net takes 4")


def check_schedule(model: str, settings) -> None:
    """The sampling steps that get source features must be steps inversion visits; checked from
    the checkpoint's scheduler config, before the weights load (nothing when it cannot be read)."""
    if not settings.inject_steps or "num_inversion_steps" not in settings.pipeline_kwargs(for_inversion=True):
        return  # nothing injected, or an inversion that walks the sampling schedule itself (flow models)
    config = checkpoint_json(model, "scheduler/scheduler_config.json")
    if not config:
        return
    from ..pipelines.schedule import check_schedule as check
    from ..pipelines.schedule import ddim_schedulers

    check(*ddim_schedulers(config), settings.steps, settings.inversion_steps, settings.inject_steps)


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

            file = pathlib.Path(hf_hub_download(model, name, **hub_kwargs(model, name, "the model")))
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
    return BASE_BY_TEXT_WIDTH.get(checkpoint_json(model, "unet/config.json").get("cross_attention_dim"))


def pipeline_class(model: str) -> type[FlattenMixin]:
    """The FLATTEN pipeline for a checkpoint (:func:`~flatten_video.pipelines.pipeline_for_index`;
    a single file by its tensors)."""
    if is_single_file(model):
        xl = pathlib.Path(model).is_file() and single_file_family(model) == "sdxl"
        return FlattenSDXLPipeline if xl else FlattenPipeline
    return pipeline_for_index(model_index(model))


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
BASE_BY_TEXT_WIDTH = {768: "sd15", 1024: "sd21", 2048: "sdxl"}


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


def check_controlnets(model: str, controls: list[tuple[str, str | None]]) -> list[str]:
    """The ControlNet of each of ``controls`` for ``model`` (:func:`controlnet_id`), named before
    any model loads; raises its one-line error when one cannot be named."""
    family = model_family(model) if any(name is None for _, name in controls) else None
    return [controlnet_id(kind, name, family) for kind, name in controls]


def add_controlnets(pipe, controls: list[tuple[str, str | None]], dtype: torch.dtype):
    """``pipe`` with the ControlNets of ``controls`` ((kind, model or None)) as a ControlNet pipeline."""
    from diffusers import ControlNetModel

    from ..pipelines.controlnet import FlattenControlNetPipeline, FlattenSDXLControlNetPipeline

    nets = []
    for kind, model in controls:
        name = controlnet_id(kind, model, BASE_BY_TEXT_WIDTH.get(pipe.unet.config.cross_attention_dim))
        try:
            nets.append(ControlNetModel.from_pretrained(name, **dtype_kwargs(dict(dtype=dtype)), use_safetensors=True,
                                                        **hub_kwargs(name, "config.json", f"the {kind} ControlNet")))
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
                  model_config: str | None = None, attention_backend: str | None = None, compile: bool = False):
    """The FLATTEN pipeline of ``model`` (:func:`pipeline_class`) on ``device`` with ``loras``
    applied and, for ``controls`` ((kind, model or None) pairs), their ControlNets.

    ``model`` may be a single ``.safetensors`` checkpoint file; ``model_config`` then names its
    base model's diffusers folder or hub id (default: the family's)."""
    if is_single_file(model):
        if not pathlib.Path(model).is_file():
            raise ModelLoadError(f"could not load the checkpoint {model}: no such file")
        pipe = load_single_file(pipeline_class(model), model, model_config, **dtype_kwargs(dict(dtype=dtype)))
    else:
        pipe = pipeline_class(model).from_pretrained(model, dtype=dtype, **hub_kwargs(model, "model_index.json", "the model"))
    pipe.load_loras(list(loras or []), scale=lora_scale)
    if controls:
        pipe = add_controlnets(pipe, list(controls), dtype)
    if pipe.offload_text_encoder and torch.device(device).type == "cuda":
        # Each model is on the GPU only while it runs: the text encoder's memory is given back
        # before the denoiser's first step (diffusers' model CPU offload).
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe = pipe.to(device)
    if attention_backend is not None:
        pipe.set_attention_backend(attention_backend)
    if compile:
        pipe.compile_repeated_blocks()
    return pipe
