"""A source video inverted once and edited many times, and its file format."""

from __future__ import annotations

import json
import os
import pathlib
from dataclasses import dataclass, field

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..files import atomic_write
from ..models.context import FlattenConfig
from ..models.features import FeatureStore
from ..trajectories import Trajectories

INVERSION_FORMAT = "flatten-video-inversion/2"


@dataclass
class FlattenInversion:
    """A source video inverted by a FLATTEN pipeline, ready to be edited many times.

    Attributes:
        latents: z_T, (1, C, F, h, w).
        trajectories: the trajectories of every grid where flow-guided attention runs.
        config: the :class:`FlattenConfig` it was inverted with; every edit of it uses the same.
        num_inference_steps: the sampling schedule the features were recorded for.
        num_inversion_steps: the DDIM inversion steps it took.
        injected_timesteps: the sampling timesteps whose source features are held.
        feature_mode: ``"stored"`` (features in ``features``) or ``"recompute"`` (the U-Net
            inputs at those timesteps in ``source_latents``); ``"auto"`` has been resolved to one
            of them.
        features: the recorded features (stored mode).
        source_latents: timestep -> (1, C, F, h, w) latent inversion fed the U-Net at each
            injected timestep. Always kept (about 1 MB a step at 512x512): recompute mode
            recomputes the features from them, and they let :meth:`save` write any inversion.
        init: how z_T was made: ``"inversion"`` (DDIM inversion of the source), or for
            ControlVideo-style editing ``"noise"`` (one seeded noise for every frame) or
            ``"trajectory-noise"`` (one noise per trajectory), with nothing injected.
        timings: seconds spent on each stage that made it (``flow``, ``trajectories``,
            ``encode``, ``invert``), for reports; not saved.
    """

    latents: torch.Tensor
    trajectories: dict[tuple[int, int], Trajectories]
    config: FlattenConfig
    num_inference_steps: int
    num_inversion_steps: int
    injected_timesteps: list[int]
    feature_mode: str
    features: FeatureStore | None = None
    source_latents: dict[int, torch.Tensor] = field(default_factory=dict)
    init: str = "inversion"
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def inject_steps(self) -> int:
        return len(self.injected_timesteps)

    @property
    def num_frames(self) -> int:
        return self.latents.shape[2]

    @property
    def held_bytes(self) -> int:
        """Bytes held to inject source features: features (stored) or latents (recompute)."""
        if self.features is not None:
            return self.features.nbytes
        return sum(t.numel() * t.element_size() for t in self.source_latents.values())

    def check_compatible(self, config: FlattenConfig, num_inference_steps: int, inject_steps: int, num_inversion_steps: int) -> None:
        """Raise ``ValueError`` when an edit asks for settings other than the inversion's.

        Features recorded for one schedule and attention cannot serve another: mixing them would
        silently give neither edit.
        """
        asked = dict(config.as_dict(), num_inference_steps=num_inference_steps, inject_steps=inject_steps,
                     num_inversion_steps=num_inversion_steps)
        made = dict(self.config.as_dict(), num_inference_steps=self.num_inference_steps, inject_steps=self.inject_steps,
                    num_inversion_steps=self.num_inversion_steps)
        differ = [f"{name}={asked[name]!r} (inverted with {made[name]!r})" for name in made if asked[name] != made[name]]
        if differ:
            raise ValueError(
                f"this inversion cannot be edited with {', '.join(differ)}: leave those arguments out to use the "
                "inversion's, or invert the video again with them"
            )

    def save(self, path: str | os.PathLike) -> pathlib.Path:
        """Write z_T, the source latents, the trajectories and the settings to a safetensors file,
        atomically.

        Stored features are not written (tens of GB at the paper's size): a loaded inversion
        recomputes them from the source latents, which gives the same edit.
        """
        tensors = {"latents": self.latents}
        tensors.update({f"source_latents.{t}": latent for t, latent in self.source_latents.items()})
        tensors.update({f"trajectories.{h}x{w}": tr.labels for (h, w), tr in self.trajectories.items()})
        metadata = {
            "format": INVERSION_FORMAT,
            "config": json.dumps(self.config.as_dict()),
            "num_inference_steps": str(self.num_inference_steps),
            "num_inversion_steps": str(self.num_inversion_steps),
            "injected_timesteps": json.dumps(self.injected_timesteps),
            "init": self.init,
        }
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, ".safetensors") as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FlattenInversion":
        """An inversion written by :meth:`save`, in recompute mode, on the CPU.

        Raises:
            ValueError: the file is not a complete inversion written by this version.
        """
        try:
            with safe_open(str(path), "pt") as file:
                metadata = file.metadata() or {}
                tensors = {key: file.get_tensor(key) for key in file.keys()}
        except Exception as error:  # safetensors raises its own errors for a truncated or foreign file
            raise ValueError(f"cannot read the inversion {path}: {error}") from error
        if metadata.get("format") != INVERSION_FORMAT or "latents" not in tensors:
            raise ValueError(f"{path} is not an inversion written by this flatten-video ({INVERSION_FORMAT})")
        injected = json.loads(metadata["injected_timesteps"])
        source_latents = {int(key.split(".", 1)[1]): v for key, v in tensors.items() if key.startswith("source_latents.")}
        if sorted(source_latents) != sorted(injected):
            raise ValueError(f"{path} lacks the source latents of some injected timesteps")
        trajectories = {}
        for key, labels in tensors.items():
            if key.startswith("trajectories."):
                h, w = (int(n) for n in key.split(".", 1)[1].split("x"))
                trajectories[(h, w)] = Trajectories.from_labels(labels)
        return cls(
            latents=tensors["latents"],
            trajectories=trajectories,
            config=FlattenConfig.from_dict(json.loads(metadata["config"])),
            num_inference_steps=int(metadata["num_inference_steps"]),
            num_inversion_steps=int(metadata["num_inversion_steps"]),
            injected_timesteps=injected,
            feature_mode="recompute",
            source_latents=source_latents,
            init=metadata.get("init", "inversion"),
        )
