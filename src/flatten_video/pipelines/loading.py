"""Loading FLATTEN pipelines and LoRAs: safetensors only, DDIM schedulers, one-line errors."""

from __future__ import annotations

import os
import pathlib
from typing import Callable

from diffusers import DDIMInverseScheduler, DDIMScheduler

from .output import ModelLoadError


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def load_pretrained(load: Callable, family: str, pretrained_model_name_or_path, kwargs: dict):
    """``load(path, **kwargs)`` (diffusers' ``from_pretrained``) with safetensors only unless
    ``use_safetensors=False``, the checkpoint's scheduler as DDIM and its inverse, and any failure
    as one :class:`ModelLoadError` line, the advice first."""
    kwargs.setdefault("use_safetensors", True)
    try:
        if "scheduler" not in kwargs:
            kwargs["scheduler"] = DDIMScheduler.from_pretrained(
                pretrained_model_name_or_path,
                subfolder="scheduler",
                **{k: kwargs[k] for k in ("local_files_only", "cache_dir", "revision", "token") if k in kwargs},
            )
        kwargs.setdefault("inverse_scheduler", DDIMInverseScheduler.from_config(kwargs["scheduler"].config))
        return load(pretrained_model_name_or_path, **kwargs)
    except (OSError, EnvironmentError, ValueError) as error:
        raise ModelLoadError(
            f"could not load the {family} model {pretrained_model_name_or_path!r}: give a hub id "
            "that exists (a first run downloads it; offline, it must be in the Hugging Face cache) or a "
            f"local folder in diffusers layout with safetensors weights ({_one_line(error)})"
        ) from error


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
            if pathlib.Path(source).suffix and not pathlib.Path(source).exists():  # a file name, not a hub id
                raise ModelLoadError(f"could not load the LoRA {str(source)!r}: no such file")
            try:
                self.load_lora_weights(str(source), adapter_name=f"lora{len(self.loras)}", use_safetensors=True)
            except (OSError, EnvironmentError, ValueError, KeyError) as error:
                raise ModelLoadError(
                    f"could not load the LoRA {str(source)!r}: give a .safetensors file, a folder holding one, or a "
                    f"hub id ({_one_line(error)})"
                ) from error
            self.loras.append((str(source), float(scale)))
        if self.loras:
            self.set_adapters([f"lora{i}" for i in range(len(self.loras))], [weight for _, weight in self.loras])
