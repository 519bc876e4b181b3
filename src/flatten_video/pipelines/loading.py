"""Loading FLATTEN pipelines and LoRAs: safetensors only, DDIM schedulers, one-line errors."""

from __future__ import annotations

import contextlib
import os
import pathlib
from typing import Callable

from ..hub import hub_kwargs, is_hub_id
from .output import ModelLoadError


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def dtype_kwargs(kwargs: dict) -> dict:
    """``kwargs`` with the weights' dtype under the name the installed diffusers takes: ``dtype``
    since it deprecated ``torch_dtype`` (users may write either), ``torch_dtype`` before."""
    from diffusers.utils import deprecation_utils

    kwargs = dict(kwargs)
    dtype = kwargs.pop("dtype", None)
    dtype = kwargs.pop("torch_dtype", None) if dtype is None else dtype
    if dtype is not None:
        current = hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE")
        kwargs["dtype" if current else "torch_dtype"] = dtype
    return kwargs


def load_pretrained(load: Callable, family: str, pretrained_model_name_or_path, kwargs: dict):
    """``load(path, **kwargs)`` (diffusers' ``from_pretrained``) with safetensors only unless
    ``use_safetensors=False``, the checkpoint's scheduler config read as DDIM's (the constructor
    makes the inverse from it), and any failure as one :class:`ModelLoadError` line, the advice first."""
    kwargs.setdefault("use_safetensors", True)
    try:
        if "scheduler" not in kwargs:
            from diffusers import DDIMScheduler

            config = DDIMScheduler.load_config(
                pretrained_model_name_or_path,
                subfolder="scheduler",
                **{k: kwargs[k] for k in ("local_files_only", "cache_dir", "revision", "token") if k in kwargs},
            )
            kwargs["scheduler"] = DDIMScheduler.from_config(config)
        return load(pretrained_model_name_or_path, **dtype_kwargs(kwargs))
    except (OSError, EnvironmentError, ValueError) as error:
        raise ModelLoadError(
            f"could not load the {family} model {pretrained_model_name_or_path!r}: give a hub id "
            "that exists (a first run downloads it; offline, it must be in the Hugging Face cache) or a "
            f"local folder in diffusers layout with safetensors weights ({_one_line(error)})"
        ) from error


def share_components(cls, pipeline, components: dict):
    """A ``cls`` FLATTEN pipeline over the modules of a loaded diffusers ``pipeline`` (a
    ``StableDiffusionPipeline``, an SDXL or Wan one, or another FLATTEN pipeline), nothing copied
    or loaded (``cls``'s constructor makes the schedulers it samples with from the scheduler's
    config), its settings (SDXL's ``force_zeros_for_empty_prompt``, Wan 2.2's ``boundary_ratio``)
    kept; ``components`` replace any of them. ``ValueError`` in one line for a pipeline of another
    family, told by a module ``cls.other_family_modules`` names (SDXL's second text encoder)."""
    import inspect

    modules = pipeline.components
    for name, other in getattr(cls, "other_family_modules", {}).items():
        if modules.get(name) is not None:
            raise ValueError(f"a {cls.__name__} cannot be made from a {type(pipeline).__name__}: its {name} makes it "
                             f"a pipeline for {other} ({other}.from_pipe(pipe))")
    parameters = {name: p for name, p in inspect.signature(cls.__init__).parameters.items() if name != "self"}
    wanted = list(parameters)
    shared = {name: module for name, module in modules.items() if name in wanted}
    shared.update({name: value for name, value in pipeline.config.items() if name in wanted and name not in modules})
    shared.update(components)
    required = [name for name, parameter in parameters.items() if parameter.default is inspect.Parameter.empty]
    missing = [name for name in required if shared.get(name) is None]
    if missing:
        raise ValueError(f"a {cls.__name__} cannot be made from a {type(pipeline).__name__}: it has no "
                         f"{', '.join(missing)} (give them as keyword arguments)")
    made = cls(**{name: shared[name] for name in wanted if name in shared})
    made.loras = list(getattr(pipeline, "loras", []))
    return made


def check_lora(source: str | os.PathLike) -> dict:
    """Raise :class:`ModelLoadError` unless ``source`` is a LoRA that can be read: a readable
    safetensors file (nothing is unpickled), a folder holding one, or a hub id that is reachable or
    cached. Cheap, so the app checks every LoRA before the model loads.

    Returns:
        The hub keyword arguments to load it with (``local_files_only`` offline).
    """
    from safetensors import safe_open

    path = pathlib.Path(source)
    if path.is_dir():
        if not any(path.glob("*.safetensors")):
            raise ModelLoadError(f"could not load the LoRA {str(source)!r}: the folder holds no .safetensors file")
        return {}
    if is_hub_id(source):
        return hub_kwargs(source, "", "the LoRA")
    if not path.is_file():
        raise ModelLoadError(f"could not load the LoRA {str(source)!r}: no such file")
    if path.suffix.lower() != ".safetensors":
        raise ModelLoadError(f"could not load the LoRA {str(source)!r}: only .safetensors files are read (nothing is unpickled)")
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except Exception:  # safetensors' own error types are not OSErrors
        raise ModelLoadError(f"could not load the LoRA {str(source)!r}: not a valid safetensors file (damaged, or "
                             "another format renamed)") from None
    return {}


def _lora_file(source: str | os.PathLike) -> pathlib.Path | None:
    """The local safetensors file a LoRA source names (a file, or the first in a folder); None
    for a hub id or nothing there."""
    path = pathlib.Path(source)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path] if path.is_file() else []
    return files[0] if files else None


def lora_target(source: str | os.PathLike) -> tuple[str, int | None] | None:
    """What a local LoRA file (or the one in a folder) was trained on, from its tensors' names and
    shapes, without loading them: ("unet", width of the text its cross-attention reads: 768 for
    SD 1.x, 1024 for SD 2.x, 2048 for SDXL) or ("transformer", None); None when it cannot tell
    (a hub id, an unknown layout)."""
    from safetensors import safe_open

    path = _lora_file(source)
    if path is None:
        return None
    with safe_open(str(path), framework="pt") as file:
        keys = list(file.keys())
        for key in keys:
            # The cross-attention key projection reads the text: its input width names the family
            # (peft/diffusers "unet....attn2.to_k.lora_A.weight", kohya "lora_unet_..._attn2_to_k.lora_down.weight").
            unet = key.startswith(("unet.", "lora_unet_"))
            if unet and "attn2" in key and "to_k" in key and ("lora_A" in key or "lora_down" in key):
                return "unet", int(file.get_slice(key).get_shape()[1])
    if any(key.startswith(("unet.", "lora_unet_")) for key in keys):
        return "unet", None
    if any(key.startswith(("transformer.", "diffusion_model.", "lora_transformer_")) for key in keys):
        return "transformer", None
    return None


def _lora_state_dict(file: pathlib.Path, denoiser: str, config: dict) -> dict:
    """The LoRA's tensors for ``denoiser`` ("unet" or "transformer") in peft's names, converted
    from kohya's or diffusers' older forms as diffusers' loaders do it. Only the shapes are read:
    every tensor is on the meta device except the scalar alphas, whose values the conversion reads."""
    import torch
    from diffusers.loaders import StableDiffusionLoraLoaderMixin, WanLoraLoaderMixin
    from diffusers.utils import convert_unet_state_dict_to_peft
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as opened:
        shapes = {key: opened.get_slice(key).get_shape() for key in opened.keys()}
        tensors = {key: opened.get_tensor(key) if len(shape) <= 1 and sum(shape) <= 1 else torch.empty(shape, device="meta")
                   for key, shape in shapes.items()}
    if denoiser == "unet":
        state, _ = StableDiffusionLoraLoaderMixin.lora_state_dict(tensors, unet_config=config)
    else:
        state = WanLoraLoaderMixin.lora_state_dict(tensors)
    prefix = f"{denoiser}."
    state = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    return state if any(".lora_A." in key for key in state) else convert_unet_state_dict_to_peft(state)


def lora_misfit(source: str | os.PathLike, denoiser: str, class_name: str, config: dict) -> str | None:
    """Why a local LoRA cannot go on a denoiser (diffusers class ``class_name`` made from
    ``config``, its "unet" or "transformer"), from shapes alone: the first module it adapts that
    the denoiser lacks or that has other widths, as a phrase; None when it fits or cannot be told
    (a hub id, a layout diffusers cannot read). The denoiser is built on the meta device, so no
    weights are read or allocated."""
    import diffusers
    import torch

    file = None if is_hub_id(source) else _lora_file(source)
    if file is None or not hasattr(diffusers, class_name):
        return None
    try:
        state = _lora_state_dict(file, denoiser, config)
        with torch.device("meta"):
            modules = dict(getattr(diffusers, class_name).from_config(config).named_modules())
    except Exception:  # noqa: BLE001 - an unreadable layout is for loading to report
        return None
    for key, down in state.items():
        if not key.endswith(".lora_A.weight"):
            continue
        name = key[: -len(".lora_A.weight")]
        module, up = modules.get(name), state.get(f"{name}.lora_B.weight")
        weight = getattr(module, "weight", None)
        if weight is None:
            return f"the model's {denoiser} has no {name}"
        lora_shape = (down.shape[1], up.shape[0] if up is not None else weight.shape[0])
        if lora_shape != (weight.shape[1], weight.shape[0]):
            return (f"its {name} maps {lora_shape[0]} features to {lora_shape[1]}, the model's "
                    f"{weight.shape[1]} to {weight.shape[0]}")
    return None


@contextlib.contextmanager
def _without_diffusers_failure_log():
    """diffusers' peft loader logs a failed LoRA's whole error (dozens of lines) before raising it;
    the caller raises it again as one line, so that log record is dropped while loading."""
    import logging

    def keep(record: logging.LogRecord) -> bool:
        return "was unsuccessful with the following error" not in record.getMessage()

    logger = logging.getLogger("diffusers.loaders.peft")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


class LoraLoadingMixin:
    """``load_loras`` for pipelines with diffusers' LoRA loader (``load_lora_weights``, ``set_adapters``).

    Attributes:
        loras: (source, scale) of every LoRA applied, in order (the inversion cache keys on them).
    """

    loras: list[tuple[str, float]]

    def load_loras(self, sources: list[str | os.PathLike], scale: float = 1.0) -> None:
        """Apply LoRA weights to the U-Net (and the text encoders where they have some).

        Args:
            sources: safetensors files, folders holding one, or hub ids, in diffusers or kohya
                format. Only safetensors are read: nothing is unpickled.
            scale: the weight of every LoRA given here (1: as trained).

        Raises:
            ModelLoadError: a source cannot be found or read, in one line.
        """
        for source in sources:
            hub = check_lora(source)
            try:
                with _without_diffusers_failure_log():
                    self.load_lora_weights(str(source), adapter_name=f"lora{len(self.loras)}", use_safetensors=True, **hub)
            except (OSError, EnvironmentError, ValueError, KeyError) as error:
                raise ModelLoadError(
                    f"could not load the LoRA {str(source)!r}: give a .safetensors file, a folder holding one, or a "
                    f"hub id ({_one_line(error)})"
                ) from error
            except RuntimeError as error:  # torch's load_state_dict: one line per tensor of other shapes
                mismatches = [line.strip() for line in str(error).splitlines() if line.strip().startswith("size mismatch")]
                if not mismatches:
                    raise
                raise ModelLoadError(
                    f"could not load the LoRA {str(source)!r}: it was trained on another model ({len(mismatches)} "
                    f"tensors of other shapes; the first: {mismatches[0]})"
                ) from error
            self.loras.append((str(source), float(scale)))
        if self.loras:
            self.set_adapters([f"lora{i}" for i in range(len(self.loras))], [weight for _, weight in self.loras])


#: Hub id of the base model whose configs a single-file checkpoint of each family needs.
SINGLE_FILE_BASES = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd21": "stabilityai/stable-diffusion-2-1",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}


def is_single_file(model: str | os.PathLike) -> bool:
    """Whether ``model`` names one checkpoint file (as artists download them) rather than a folder or hub id."""
    return pathlib.Path(model).suffix.lower() in (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def single_file_family(path: str | os.PathLike) -> str:
    """``"sd15"``, ``"sd21"`` or ``"sdxl"``, read from the checkpoint's tensor names and shapes.

    Raises:
        ModelLoadError: not a safetensors file this project reads.
    """
    from safetensors import safe_open

    from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES

    path = pathlib.Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ModelLoadError(
            f"only .safetensors single-file checkpoints are read ({path.name} would be unpickled, which can run code): "
            "convert it or download the model's .safetensors file"
        )
    try:
        with safe_open(str(path), "pt") as file:
            keys = set(file.keys())
            v2 = CHECKPOINT_KEY_NAMES["v2"]
            width = file.get_slice(v2).get_shape()[-1] if v2 in keys else None
    except Exception as error:
        raise ModelLoadError(f"could not read the checkpoint {path}: not a valid safetensors file, damaged or another "
                             f"format renamed ({_one_line(error)})") from error
    if any(key.startswith("conditioner.embedders.1.") for key in keys):
        return "sdxl"
    return "sd21" if width == 1024 else "sd15"


def load_single_file(pipeline_class, path: str | os.PathLike, config: str | None = None, **kwargs):
    """A FLATTEN pipeline from one Stable Diffusion checkpoint file, through diffusers' ``from_single_file``.

    Args:
        pipeline_class: the FLATTEN pipeline to build (SD's or SDXL's, by :func:`single_file_family`).
        config: the base model's diffusers folder or hub id (default: the family's, fetched from the
            hub the first time; offline it must be cached).

    Raises:
        ModelLoadError: one line naming what to download when the base model's config is missing.
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    family = single_file_family(path)
    base = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    given, config = config is not None, config or SINGLE_FILE_BASES[family]
    try:
        # Offline, the base configs come from the cache at once, or fail at once (no retries).
        kwargs = {**hub_kwargs(config, "model_index.json", "the base model's configs"), **kwargs}
        loaded = base.from_single_file(str(path), config=config, **kwargs)
    except Exception as error:  # diffusers raises several kinds when the config cannot be fetched
        if given:  # the configs were there: say what failed, not that they are missing
            from safetensors import safe_open

            with safe_open(str(path), "pt") as file:
                unet_only = not any(key.startswith("first_stage_model.") for key in file.keys())
            hint = ("; it holds no VAE weights (a U-Net-only file?): put it as unet/ in a copy of that diffusers folder, "
                    "or give a full checkpoint") if unet_only else ""
            raise ModelLoadError(f"could not load the single-file checkpoint {path} with the configs of {config} "
                                 f"({_one_line(error)}){hint}") from error
        raise ModelLoadError(
            f"could not load the single-file checkpoint {path}: it needs the configs of its base model {config} "
            f"({family}); connect once so they are fetched and cached, or give --model-config with a local copy of "
            f"{config} in diffusers layout (its config and tokenizer files suffice) ({_one_line(error)})"
        ) from error
    return share_components(pipeline_class, loaded, {})
