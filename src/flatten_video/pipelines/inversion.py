"""Where sampling starts, made once and edited many times, and its file format.

An editing method (:mod:`flatten_video.pipelines.methods`) makes an :class:`EditStart`: the
latents sampling starts from and the trajectories and config FLATTEN runs with. The paper's DDIM
inversion makes a :class:`FlattenInversion`, which also holds what sampling injects.
"""

from __future__ import annotations

import json
import os
import pathlib
from dataclasses import dataclass, field

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .. import defaults
from ..files import atomic_write
from ..models.context import FlattenConfig
from ..models.features import FeatureStore
from ..trajectories import Trajectories

INVERSION_FORMAT = "flatten-video-inversion/2"


@dataclass(kw_only=True)
class EditStart:
    """The start of sampling made by an editing method, ready to be edited many times.

    Attributes:
        latents: (1, C, F', h, w) latents sampling starts from, F' latent frames.
        trajectories: the trajectories of every token grid where flow-guided attention runs.
        config: the :class:`FlattenConfig` it was made with; every edit of it uses the same.
        num_inference_steps: the sampling schedule it was made for.
        method: the editing method that made it (:data:`flatten_video.choices.METHODS`).
        source_prompt: the prompt the source was seen with (inversion's; the paper's is empty).
        timings: seconds spent on each stage that made it (``flow``, ``trajectories``,
            ``encode``, ``invert``, ``noise``), for reports; not saved.
    """

    latents: torch.Tensor
    trajectories: dict[tuple[int, int], Trajectories]
    config: FlattenConfig
    num_inference_steps: int
    method: str
    source_prompt: str = defaults.SOURCE_PROMPT
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def inject_steps(self) -> int:
        """Sampling steps that get source features: none from a start that is not an inversion."""
        return 0

    @property
    def num_latent_frames(self) -> int:
        return self.latents.shape[2]

    @property
    def held_bytes(self) -> int:
        """Bytes held to inject source features."""
        return 0

    def _settings(self, config: FlattenConfig, num_inference_steps: int, **_) -> dict:
        return dict(config.as_dict(), num_inference_steps=num_inference_steps)

    def check_compatible(self, config: FlattenConfig, num_inference_steps: int, **steps) -> None:
        """Raise ``ValueError`` when an edit asks for settings other than the ones it was made with.

        Features recorded for one schedule and attention cannot serve another: mixing them would
        silently give neither edit.
        """
        asked = self._settings(config, num_inference_steps, **steps)
        made = self._settings(self.config, self.num_inference_steps, inject_steps=self.inject_steps,
                              num_inversion_steps=getattr(self, "num_inversion_steps", None))
        differ = [f"{name}={asked[name]!r} (inverted with {made[name]!r})" for name in made if asked[name] != made[name]]
        if differ:
            raise ValueError(
                f"this inversion cannot be edited with {', '.join(differ)}: leave those arguments out to use the "
                "inversion's, or invert the video again with them"
            )

    def _tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"latents": self.latents}
        tensors.update({f"trajectories.{h}x{w}": tr.labels for (h, w), tr in self.trajectories.items()})
        return tensors

    def _metadata(self) -> dict[str, str]:
        return {
            "format": INVERSION_FORMAT,
            "config": json.dumps(self.config.as_dict()),
            "num_inference_steps": str(self.num_inference_steps),
            "method": self.method,
            "source_prompt": self.source_prompt,
        }

    def save(self, path: str | os.PathLike) -> pathlib.Path:
        """Write it to a safetensors file, atomically: the latents, the trajectories, the settings
        and what an inversion needs to inject (not the stored features, tens of GB at the paper's
        size: a loaded inversion recomputes them from the source latents, which gives the same edit)."""
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, ".safetensors") as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in self._tensors().items()}, tmp,
                      metadata=self._metadata())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EditStart":
        """A start written by :meth:`save`, on the CPU: a :class:`FlattenInversion` (in recompute
        mode) when it was an inversion, else an :class:`EditStart`.

        Raises:
            ValueError: the file is not a complete start written by this version.
        """
        try:
            with safe_open(str(path), "pt") as file:
                metadata = file.metadata() or {}
                tensors = {key: file.get_tensor(key) for key in file.keys()}
        except Exception as error:  # safetensors raises its own errors for a truncated or foreign file
            raise ValueError(f"cannot read the inversion {path}: {error}") from error
        if metadata.get("format") != INVERSION_FORMAT or "latents" not in tensors:
            raise ValueError(f"{path} is not an inversion written by this flatten-video ({INVERSION_FORMAT})")
        trajectories = {}
        for key, labels in tensors.items():
            if key.startswith("trajectories."):
                h, w = (int(n) for n in key.split(".", 1)[1].split("x"))
                trajectories[(h, w)] = Trajectories.from_labels(labels)
        common = dict(
            latents=tensors["latents"],
            trajectories=trajectories,
            config=FlattenConfig.from_dict(json.loads(metadata["config"])),
            num_inference_steps=int(metadata["num_inference_steps"]),
            # "init": the name files of the first format version gave the method.
            method=metadata.get("method", metadata.get("init", defaults.METHOD)),
            source_prompt=metadata.get("source_prompt", defaults.SOURCE_PROMPT),
        )
        if "injected_timesteps" not in metadata or int(metadata.get("num_inversion_steps", 0)) == 0:
            return EditStart(**common)
        injected = json.loads(metadata["injected_timesteps"])
        source_latents = {_timestep(key.split(".", 1)[1]): v for key, v in tensors.items() if key.startswith("source_latents.")}
        if sorted(source_latents) != sorted(injected):
            raise ValueError(f"{path} lacks the source latents of some injected timesteps")
        return FlattenInversion(
            **common, num_inversion_steps=int(metadata["num_inversion_steps"]), injected_timesteps=injected,
            feature_mode="recompute", source_latents=source_latents,
        )


def _timestep(text: str) -> int | float:
    """A timestep written in a tensor's name: DDIM's are integers, flow matching's floats."""
    return int(text) if text.isdigit() else float(text)


@dataclass(kw_only=True)
class FlattenInversion(EditStart):
    """A source video inverted by a FLATTEN pipeline (the paper's method: DDIM inversion, or ODE
    inversion on a flow model), with what sampling injects.

    Attributes:
        latents: z_T, (1, C, F', h, w).
        num_inversion_steps: the inversion steps it took.
        injected_timesteps: the sampling timesteps whose source features are held (integers for
            DDIM, floats for flow matching).
        feature_mode: ``"stored"`` (features in ``features``) or ``"recompute"`` (the model
            inputs at those timesteps in ``source_latents``); ``"auto"`` has been resolved to one
            of them.
        features: the recorded features (stored mode).
        source_latents: timestep -> (1, C, F', h, w) latent inversion fed the model at each
            injected timestep. Always kept (about 1 MB a step at 512x512): recompute mode
            recomputes the features from them, and they let :meth:`save` write any inversion.
    """

    method: str = "inversion"
    num_inversion_steps: int
    injected_timesteps: list[int] | list[float]
    feature_mode: str
    features: FeatureStore | None = None
    source_latents: dict[int | float, torch.Tensor] = field(default_factory=dict)

    @property
    def inject_steps(self) -> int:
        return len(self.injected_timesteps)

    @property
    def held_bytes(self) -> int:
        """Bytes held to inject source features: features (stored) or latents (recompute)."""
        if self.features is not None:
            return self.features.nbytes
        return sum(t.numel() * t.element_size() for t in self.source_latents.values())

    def _settings(self, config: FlattenConfig, num_inference_steps: int, inject_steps=None, num_inversion_steps=None,
                  **_) -> dict:
        return dict(config.as_dict(), num_inference_steps=num_inference_steps, inject_steps=inject_steps,
                    num_inversion_steps=num_inversion_steps)

    def _tensors(self) -> dict[str, torch.Tensor]:
        tensors = super()._tensors()
        tensors.update({f"source_latents.{t}": latent for t, latent in self.source_latents.items()})
        return tensors

    def _metadata(self) -> dict[str, str]:
        return dict(super()._metadata(), num_inversion_steps=str(self.num_inversion_steps),
                    injected_timesteps=json.dumps(self.injected_timesteps))
