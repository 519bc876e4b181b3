"""The FLATTEN editing pipeline (DESIGN.md 1, steps 1-7) on a stock Stable Diffusion U-Net."""

from __future__ import annotations

import json
import logging
import os
import pathlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import PIL.Image
import torch
from diffusers import (
    AutoencoderKL,
    DDIMInverseScheduler,
    DDIMScheduler,
    DiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.utils import BaseOutput
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from .attention import install_flatten
from .context import FLOW_GUIDED_MODES, FlattenContext
from .features import FEATURE_MODES, FeatureStore, available_memory, check_injection_points
from .flow import estimate_flow
from .files import atomic_write
from .trajectories import Trajectories, sample_trajectory_pyramid

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
INVERSION_FORMAT = "flatten-video-inversion/1"


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded."""


@dataclass
class FlattenPipelineOutput(BaseOutput):
    """Output of :class:`FlattenPipeline`.

    Attributes:
        frames: the edited frames: a list of PIL images (``"pil"``), a (F, H, W, 3) float array
            in [0, 1] (``"np"``), a (F, 3, H, W) tensor in [0, 1] (``"pt"``), or the final
            latents (1, C, F, h, w) (``"latent"``).
    """

    frames: list[PIL.Image.Image] | np.ndarray | torch.Tensor


@dataclass
class FlattenInversion:
    """A source video inverted by :meth:`FlattenPipeline.invert`, ready to be edited many times.

    Attributes:
        latents: z_T, (1, C, F, h, w).
        trajectories: the trajectories of every grid where flow-guided attention runs.
        num_inference_steps: the sampling schedule the features were recorded for.
        injected_timesteps: the sampling timesteps whose source features are held.
        feature_mode: ``"stored"`` (features in ``features``) or ``"recompute"`` (the U-Net
            inputs at those timesteps in ``source_latents``); ``"auto"`` has been resolved to one
            of them.
        features: the recorded features (stored mode).
        source_latents: timestep -> (1, C, F, h, w) latent inversion fed the U-Net at each
            injected timestep. Always kept (about 1 MB a step at 512x512): recompute mode
            recomputes the features from them, and they let :meth:`save` write any inversion.
    """

    latents: torch.Tensor
    trajectories: dict[tuple[int, int], Trajectories]
    num_inference_steps: int
    injected_timesteps: list[int]
    feature_mode: str
    features: FeatureStore | None = None
    source_latents: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def inject_steps(self) -> int:
        return len(self.injected_timesteps)

    @property
    def held_bytes(self) -> int:
        """Bytes held to inject source features: features (stored) or latents (recompute)."""
        if self.features is not None:
            return self.features.nbytes
        return sum(t.numel() * t.element_size() for t in self.source_latents.values())

    def save(self, path: str | os.PathLike) -> pathlib.Path:
        """Write z_T, the source latents and the trajectories to a safetensors file, atomically.

        Stored features are not written (tens of GB at the paper's size): a loaded inversion
        recomputes them from the source latents, which gives the same edit.
        """
        tensors = {"latents": self.latents}
        tensors.update({f"source_latents.{t}": latent for t, latent in self.source_latents.items()})
        tensors.update({f"trajectories.{h}x{w}": tr.labels for (h, w), tr in self.trajectories.items()})
        metadata = {
            "format": INVERSION_FORMAT,
            "num_inference_steps": str(self.num_inference_steps),
            "injected_timesteps": json.dumps(self.injected_timesteps),
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
            ValueError: the file is not a complete inversion written by this project.
        """
        try:
            with safe_open(str(path), "pt") as file:
                metadata = file.metadata() or {}
                tensors = {key: file.get_tensor(key) for key in file.keys()}
        except Exception as error:  # safetensors raises its own errors for a truncated or foreign file
            raise ValueError(f"cannot read the inversion {path}: {error}") from error
        if metadata.get("format") != INVERSION_FORMAT or "latents" not in tensors:
            raise ValueError(f"{path} is not an inversion written by flatten-video ({INVERSION_FORMAT})")
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
            num_inference_steps=int(metadata["num_inference_steps"]),
            injected_timesteps=injected,
            feature_mode="recompute",
            source_latents=source_latents,
        )


def frames_to_tensor(video) -> torch.Tensor:
    """A list of PIL images, a (F, H, W, 3) uint8/float array or a (F, 3, H, W) tensor in [0, 1]
    -> a (F, 3, H, W) float32 tensor in [0, 1]."""
    if isinstance(video, torch.Tensor):
        frames = video
    elif isinstance(video, np.ndarray):
        frames = torch.from_numpy(video).permute(0, 3, 1, 2)
    elif isinstance(video, (list, tuple)) and video and isinstance(video[0], PIL.Image.Image):
        frames = torch.from_numpy(np.stack([np.asarray(f.convert("RGB")) for f in video])).permute(0, 3, 1, 2)
    else:
        raise ValueError("video must be a (F, 3, H, W) tensor, a (F, H, W, 3) array or a list of PIL images")
    if frames.dtype == torch.uint8:
        frames = frames.float() / 255
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"video must have shape (F, 3, H, W), got {tuple(frames.shape)}")
    return frames.float()


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _feature_budget(feature_memory_budget: int | None) -> int | None:
    """Bytes the stored features of ``feature_mode="auto"`` may take; None for no limit.

    Half of the host's available memory by default: the rest is left to the models, the frames
    and whatever else runs on the host.
    """
    if feature_memory_budget is not None:
        if not isinstance(feature_memory_budget, int) or feature_memory_budget < 0:
            raise ValueError(f"feature_memory_budget must be a number of bytes >= 0, got {feature_memory_budget!r}")
        return feature_memory_budget
    available = available_memory()
    return None if available is None else available // 2


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB"


class FlattenPipeline(DiffusionPipeline, StableDiffusionLoraLoaderMixin):
    """Text-to-video editing with FLATTEN on any Stable Diffusion 1.x/2.x checkpoint.

    The U-Net is diffusers' own ``UNet2DConditionModel``: frames are folded into the batch and
    FLATTEN is installed through attention processors and norm wrappers (see
    :mod:`flatten_video.attention`). ``__call__`` composes the public steps, which can also be
    run one by one: :meth:`prepare_trajectories`, :meth:`encode_video`, :meth:`invert`,
    :meth:`sample`, :meth:`decode_latents`. LoRAs load with :meth:`load_loras` (or diffusers'
    ``load_lora_weights``): PEFT wraps the projections, which FLATTEN's processors call.

    Args:
        vae, text_encoder, tokenizer, unet: the Stable Diffusion components.
        scheduler: a ``DDIMScheduler`` for sampling.
        inverse_scheduler: a ``DDIMInverseScheduler`` for inversion.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: DDIMScheduler,
        inverse_scheduler: DDIMInverseScheduler,
    ):
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            inverse_scheduler=inverse_scheduler,
        )
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.flatten = FlattenContext()
        install_flatten(unet, self.flatten)
        self.loras: list[tuple[str, float]] = []  # (source, scale) of each LoRA load_loras applied

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "FlattenPipeline":
        """Load a Stable Diffusion checkpoint in diffusers layout (hub id or local folder).

        Weights load from safetensors only unless ``use_safetensors=False`` is passed. The
        checkpoint's scheduler config becomes a DDIM scheduler and its inverse. Other keyword
        arguments (``torch_dtype``, ``variant``, ``local_files_only``...) go to diffusers.
        """
        kwargs.setdefault("use_safetensors", True)
        try:
            if "scheduler" not in kwargs:
                kwargs["scheduler"] = DDIMScheduler.from_pretrained(
                    pretrained_model_name_or_path,
                    subfolder="scheduler",
                    **{k: kwargs[k] for k in ("local_files_only", "cache_dir", "revision", "token") if k in kwargs},
                )
            kwargs.setdefault("inverse_scheduler", DDIMInverseScheduler.from_config(kwargs["scheduler"].config))
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except (OSError, EnvironmentError, ValueError) as error:
            # One line: the advice first, then diffusers' reason, which may span several lines.
            reason = " ".join(str(error).split())
            raise ModelLoadError(
                f"could not load the Stable Diffusion model {pretrained_model_name_or_path!r}: give a hub id "
                "that exists (a first run downloads it; offline, it must be in the Hugging Face cache) or a "
                f"local folder in diffusers layout with safetensors weights ({reason})"
            ) from error

    def load_loras(self, sources: list[str | os.PathLike], scale: float = 1.0) -> None:
        """Apply LoRA weights to the U-Net (and the text encoder where they have some).

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
                reason = " ".join(str(error).split())
                raise ModelLoadError(
                    f"could not load the LoRA {str(source)!r}: give a .safetensors file, a folder holding one, or a "
                    f"hub id ({reason})"
                ) from error
            self.loras.append((str(source), float(scale)))
        if self.loras:
            self.set_adapters([f"lora{i}" for i in range(len(self.loras))], [weight for _, weight in self.loras])

    # -- steps -----------------------------------------------------------------------------

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """Text embedding (1, 77, D) of one prompt; warns when it is truncated."""
        tokens = self.tokenizer(
            prompt, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        untruncated = self.tokenizer(prompt, padding="longest", return_tensors="pt").input_ids
        if untruncated.shape[-1] > tokens.input_ids.shape[-1]:
            removed = self.tokenizer.batch_decode(untruncated[:, self.tokenizer.model_max_length - 1 : -1])
            logger.warning(
                "The prompt is longer than the text encoder takes (%d tokens); this part was dropped: %s",
                self.tokenizer.model_max_length,
                removed[0],
            )
        embeds = self.text_encoder(tokens.input_ids.to(self._execution_device))[0]
        return embeds.to(self.unet.dtype)

    def latent_grids(self, height: int, width: int, levels: tuple[int, ...] = (0,)) -> list[tuple[int, int]]:
        """Latent grids (h, w) of the U-Net ``levels`` for frames of ``height`` x ``width`` pixels.

        Level 0 is the VAE's latent grid; each level halves it (rounding up, as the U-Net's
        stride-2 convolutions do).
        """
        h, w = height // self.vae_scale_factor, width // self.vae_scale_factor
        grids = []
        for level in range(max(levels) + 1):
            if level in levels:
                grids.append((h, w))
            h, w = -(-h // 2), -(-w // 2)
        return grids

    def prepare_trajectories(
        self,
        frames: torch.Tensor,
        *,
        flow_method: str = "raft",
        flatten_levels: tuple[int, ...] = (0,),
        generator: torch.Generator | None = None,
        progress: bool = True,
        flows: torch.Tensor | None = None,
    ) -> dict[tuple[int, int], Trajectories]:
        """Optical flow of the source frames (F, 3, H, W) in [0, 1] and the trajectories of each grid.

        ``flows``: the frames' forward flows (F-1, 2, H, W) when already estimated.
        """
        if flows is None:
            flows = estimate_flow(frames, flow_method, device=self._execution_device, progress=progress)
        seed = generator.initial_seed() if generator is not None else torch.initial_seed()
        cpu_generator = torch.Generator().manual_seed(seed)
        return sample_trajectory_pyramid(flows, self.latent_grids(*frames.shape[-2:], flatten_levels), cpu_generator)

    @torch.no_grad()
    def encode_video(
        self, frames: torch.Tensor, generator: torch.Generator | None = None, chunk_size: int = 8
    ) -> torch.Tensor:
        """VAE latents times the scaling factor: (F, 3, H, W) in [0, 1] -> (1, C, F, h, w).

        Frames are encoded in chunks; the posterior is sampled once for the whole video.
        """
        device, dtype = self._execution_device, self.vae.dtype
        moments = [
            self.vae.encode(chunk.to(device, dtype) * 2 - 1).latent_dist.parameters
            for chunk in frames.split(chunk_size)
        ]
        latents = DiagonalGaussianDistribution(torch.cat(moments)).sample(generator)
        latents = latents * self.vae.config.scaling_factor
        return latents.permute(1, 0, 2, 3).unsqueeze(0)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, chunk_size: int = 8) -> torch.Tensor:
        """(1, C, F, h, w) latents -> (F, 3, H, W) float32 frames in [0, 1], on the CPU."""
        latents = latents[0].permute(1, 0, 2, 3) / self.vae.config.scaling_factor
        frames = [
            self.vae.decode(chunk.to(self._execution_device, self.vae.dtype)).sample.float().cpu()
            for chunk in latents.split(chunk_size)
        ]
        return (torch.cat(frames) / 2 + 0.5).clamp(0, 1)

    def _unet(self, latents: torch.Tensor, timestep, embeds: torch.Tensor) -> torch.Tensor:
        """Noise prediction for B videos: latents (B, C, F, h, w), embeds (B, 77, D) -> (B, C, F, h, w)."""
        videos, channels, frames, h, w = latents.shape
        sample = latents.permute(0, 2, 1, 3, 4).reshape(videos * frames, channels, h, w)
        noise = self.unet(
            sample.to(self.unet.dtype), timestep, encoder_hidden_states=embeds.repeat_interleave(frames, 0)
        ).sample
        return noise.reshape(videos, frames, channels, h, w).permute(0, 2, 1, 3, 4).to(latents.dtype)

    def _configure(self, num_frames: int, trajectories, attention_mode: str, flatten_variant: str) -> None:
        self.flatten.num_frames = num_frames
        self.flatten.trajectories = {grid: t.to(self._execution_device) for grid, t in trajectories.items()}
        self.flatten.attention_mode = attention_mode
        self.flatten.variant = flatten_variant
        self.flatten.__post_init__()

    def _progress(self, total: int, desc: str):
        config = dict(getattr(self, "_progress_bar_config", {}))
        config.setdefault("desc", desc)
        return tqdm(total=total, **config)

    def injected_timesteps(self, num_inference_steps: int, inject_steps: int) -> list[int]:
        """The first ``inject_steps`` timesteps of the sampling schedule."""
        self.scheduler.set_timesteps(num_inference_steps)
        return [int(t) for t in self.scheduler.timesteps[:inject_steps]]

    @torch.no_grad()
    def invert(
        self,
        latents: torch.Tensor,
        trajectories: dict[tuple[int, int], Trajectories],
        *,
        num_inversion_steps: int = 100,
        num_inference_steps: int = 50,
        inject_steps: int = 40,
        feature_mode: str = "auto",
        feature_dtype: torch.dtype = torch.float16,
        feature_memory_budget: int | None = None,
        attention_mode: str = "dsta+flatten",
        flatten_variant: str = "II",
    ) -> FlattenInversion:
        """DDIM inversion of source latents with the empty prompt and FLATTEN active (DESIGN.md 1.5).

        The U-Net sees the latent at noise level t with timestep t for t = 1, 1 + k, ...,
        1 + (n-2)k (k = 1000 // n for ``num_inversion_steps`` n), and each deterministic step
        moves it to level t + k, as the paper's code does. At the timesteps that the first
        ``inject_steps`` sampling steps will visit, the latent fed to the U-Net is kept, and the
        source features are recorded (``feature_mode="stored"``, kept in ``feature_dtype`` on the
        CPU) or left to be recomputed from that latent during sampling (``"recompute"``).

        ``"auto"`` (the default) stores the features of the first injected timestep, then
        estimates the whole store as that size times ``inject_steps``: within
        ``feature_memory_budget`` it goes on storing, else it drops the store and recomputes, as
        recompute mode does. The returned inversion's ``feature_mode`` is the mode chosen.

        Args:
            latents: (1, C, F, h, w) source latents (:meth:`encode_video`).
            trajectories: (h, w) -> :class:`Trajectories` for the grids where FLATTEN runs.
            feature_memory_budget: bytes the stored features may take in ``"auto"`` mode;
                None: half of the host's available memory (no limit where that is unknown).
        """
        _check_positive(num_inversion_steps=num_inversion_steps, num_inference_steps=num_inference_steps)
        if feature_mode not in FEATURE_MODES:
            raise ValueError(f"unknown feature mode {feature_mode!r}; choose one of {', '.join(FEATURE_MODES)}")
        # Read before inversion allocates anything, so the figure is what the store may take.
        budget = _feature_budget(feature_memory_budget) if feature_mode == "auto" else None
        if not 0 <= inject_steps <= num_inference_steps:
            raise ValueError(f"inject_steps must be between 0 and num_inference_steps ({num_inference_steps})")
        if inject_steps:
            check_injection_points(self.unet)
        self._configure(latents.shape[2], trajectories, attention_mode, flatten_variant)

        self.inverse_scheduler.set_timesteps(num_inversion_steps)
        timesteps = [int(t) for t in self.inverse_scheduler.timesteps]
        step = self.inverse_scheduler.config.num_train_timesteps // num_inversion_steps
        injected = self.injected_timesteps(num_inference_steps, inject_steps)
        unseen = sorted(set(injected) - set(timesteps[:-1]))
        if unseen:
            raise ValueError(
                f"sampling with {num_inference_steps} steps injects features at timesteps that inversion with "
                f"{num_inversion_steps} steps never visits ({unseen[:5]}...); use a number of inversion steps "
                f"that is a multiple of the number of sampling steps (e.g. {2 * num_inference_steps})"
            )

        if feature_mode == "auto" and not injected:
            feature_mode = "stored"  # nothing to hold: an empty store, as stored mode gives
        # Auto mode stores until it can tell the size of the store (at the first injected step).
        store = FeatureStore(storage_dtype=feature_dtype) if feature_mode != "recompute" else None
        self.flatten.features = store
        inversion = FlattenInversion(
            latents=latents,
            trajectories=trajectories,
            num_inference_steps=num_inference_steps,
            injected_timesteps=injected,
            feature_mode=feature_mode,
            features=store,
        )
        empty = self.encode_prompt("")
        latents = latents.to(self._execution_device)
        try:
            with self._progress(len(timesteps) - 1, "DDIM inversion") as bar:
                for t in timesteps[:-1]:
                    noise = self._invert_unet(inversion, latents, t, empty, budget)
                    latents = self.inverse_scheduler.step(noise, t + step, latents).prev_sample
                    bar.update()
        finally:
            self.flatten.features = None
        inversion.latents = latents
        return inversion

    def _invert_unet(
        self, inversion: FlattenInversion, latents: torch.Tensor, t: int, embeds: torch.Tensor, budget: int | None
    ) -> torch.Tensor:
        """One inversion U-Net call, (1, C, F, h, w) -> (1, C, F, h, w), keeping what sampling
        needs at t: nothing, or the U-Net input and (stored mode) the features."""
        if t not in inversion.injected_timesteps:
            return self._unet(latents, t, embeds)
        inversion.source_latents[t] = latents.clone()
        if inversion.features is None:
            return self._unet(latents, t, embeds)
        with inversion.features.capturing(t):
            noise = self._unet(latents, t, embeds)
        if inversion.feature_mode == "auto":
            self._resolve_auto_mode(inversion, budget)
        return noise

    def _resolve_auto_mode(self, inversion: FlattenInversion, budget: int | None) -> None:
        """Settle ``feature_mode="auto"`` once the features of the first injected timestep are
        stored: every injected step records the same layers at the same shapes, so the store
        would end at this step's size times the number of injected steps.

        Within ``budget`` (None: no limit) the inversion goes on storing; beyond it, the store is
        dropped and the features are recomputed from the source latents during sampling.
        """
        estimate = inversion.features.nbytes * len(inversion.injected_timesteps)
        if budget is None or estimate <= budget:
            inversion.feature_mode = "stored"
            return
        logger.info(
            "feature_mode='auto': the source features would take %s, over the budget of %s; "
            "recomputing them during sampling instead",
            _gib(estimate),
            _gib(budget),
        )
        inversion.feature_mode = "recompute"
        inversion.features = self.flatten.features = None

    @torch.no_grad()
    def sample(
        self,
        inversion: FlattenInversion,
        prompt: str,
        negative_prompt: str = "",
        *,
        guidance_scale: float = 10.0,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        attention_mode: str = "dsta+flatten",
        flatten_variant: str = "II",
        callback_on_step_end: Callable | None = None,
    ) -> torch.Tensor:
        """DDIM sampling from an inversion with the target prompt (DESIGN.md 1.7).

        The negative prompt is the unconditional branch of classifier-free guidance (used when
        ``guidance_scale > 1``). During the first ``inversion.inject_steps`` steps the source
        features replace the fresh ones in every row of the batch.

        ``callback_on_step_end(pipe, step, timestep, {"latents": ...})`` is called after every
        step, diffusers-style; a returned dict may replace ``"latents"``.

        Returns:
            (1, C, F, h, w) final latents.
        """
        latents = inversion.latents.to(self._execution_device)
        frames = latents.shape[2]
        self._configure(frames, inversion.trajectories, attention_mode, flatten_variant)
        guided = guidance_scale > 1.0
        embeds = self.encode_prompt(prompt)
        if guided:
            embeds = torch.cat([self.encode_prompt(negative_prompt), embeds])
        recompute = inversion.feature_mode == "recompute"
        if recompute and inversion.injected_timesteps:
            source_embeds = torch.cat([self.encode_prompt(""), embeds])
            self.flatten.features = FeatureStore()
        else:
            self.flatten.features = inversion.features

        self.scheduler.set_timesteps(inversion.num_inference_steps)
        try:
            with self._progress(len(self.scheduler.timesteps), "Sampling") as bar:
                for i, t in enumerate(self.scheduler.timesteps):
                    t = int(t)
                    batch = torch.cat([latents] * 2) if guided else latents
                    if i >= inversion.inject_steps:
                        noise = self._unet(batch, t, embeds)
                    elif recompute:
                        # The source row goes first; its fresh features are shared with the others.
                        source = inversion.source_latents[t].to(latents.device)
                        with self.flatten.features.sharing(frames):
                            noise = self._unet(torch.cat([source, batch]), t, source_embeds)[1:]
                    else:
                        with inversion.features.injecting(t):
                            noise = self._unet(batch, t, embeds)
                    if guided:
                        uncond, cond = noise.chunk(2)
                        noise = uncond + guidance_scale * (cond - uncond)
                    latents = self.scheduler.step(noise, t, latents, eta=eta, generator=generator).prev_sample
                    if callback_on_step_end is not None:
                        update = callback_on_step_end(self, i, t, {"latents": latents})
                        if update and "latents" in update:
                            latents = update["latents"]
                    bar.update()
        finally:
            self.flatten.features = None
        return latents

    @torch.no_grad()
    def invert_video(
        self,
        video,
        *,
        num_inference_steps: int = 50,
        num_inversion_steps: int = 100,
        inject_steps: int = 40,
        generator: torch.Generator | None = None,
        flow_method: str = "raft",
        attention_mode: str = "dsta+flatten",
        flatten_variant: str = "II",
        flatten_levels: tuple[int, ...] = (0,),
        feature_mode: str = "auto",
        feature_dtype: torch.dtype = torch.float16,
        feature_memory_budget: int | None = None,
        trajectories: dict[tuple[int, int], Trajectories] | None = None,
        latents: torch.Tensor | None = None,
    ) -> FlattenInversion:
        """Everything before sampling: flow, trajectories, VAE encoding and inversion.

        Arguments as in :meth:`__call__`. The result can be edited with many prompts
        (``pipe(inversion=..., prompt=...)`` or :meth:`sample`) and saved with
        :meth:`FlattenInversion.save`.
        """
        frames = frames_to_tensor(video)
        if len(frames) < 2:
            raise ValueError(f"a video needs at least 2 frames, got {len(frames)}")
        height, width = frames.shape[-2:]
        if height % 8 or width % 8:
            raise ValueError(f"frame size {width}x{height} must be a multiple of 8 on both sides")
        _check_positive(num_inference_steps=num_inference_steps, num_inversion_steps=num_inversion_steps)
        FlattenContext(attention_mode=attention_mode, variant=flatten_variant)  # validates both names

        if trajectories is None:
            trajectories = (
                self.prepare_trajectories(
                    frames, flow_method=flow_method, flatten_levels=flatten_levels, generator=generator
                )
                if attention_mode in FLOW_GUIDED_MODES
                else {}
            )
        if latents is None:
            latents = self.encode_video(frames, generator)
        return self.invert(
            latents,
            trajectories,
            num_inversion_steps=num_inversion_steps,
            num_inference_steps=num_inference_steps,
            inject_steps=inject_steps,
            feature_mode=feature_mode,
            feature_dtype=feature_dtype,
            feature_memory_budget=feature_memory_budget,
            attention_mode=attention_mode,
            flatten_variant=flatten_variant,
        )

    @torch.no_grad()
    def __call__(
        self,
        video=None,
        prompt: str = "",
        negative_prompt: str = "",
        *,
        num_inference_steps: int = 50,
        num_inversion_steps: int = 100,
        inject_steps: int = 40,
        guidance_scale: float = 10.0,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        flow_method: str = "raft",
        attention_mode: str = "dsta+flatten",
        flatten_variant: str = "II",
        flatten_levels: tuple[int, ...] = (0,),
        feature_mode: str = "auto",
        feature_dtype: torch.dtype = torch.float16,
        feature_memory_budget: int | None = None,
        trajectories: dict[tuple[int, int], Trajectories] | None = None,
        latents: torch.Tensor | None = None,
        inversion: FlattenInversion | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
    ):
        """Edit a video: flow, trajectories, VAE encoding, inversion, sampling, decoding.

        Args:
            video: source frames, (F, 3, H, W) tensor in [0, 1], (F, H, W, 3) array or a list of
                PIL images; H and W multiples of 8 (64 for the default U-Net depth), F >= 2.
            prompt: the edit prompt; negative_prompt: the unconditional branch.
            num_inference_steps, num_inversion_steps, inject_steps, guidance_scale, eta: the
                paper's defaults (50, 100, 40, 10, 0).
            generator: seeds the VAE posterior sample and the trajectory sampling.
            flow_method: ``"raft"`` or ``"dis"``.
            attention_mode: ``"spatial"``, ``"dsta"``, ``"flatten"`` or ``"dsta+flatten"``.
            flatten_variant: ``"II"``, ``"I"`` or ``"source-qk"``.
            flatten_levels: U-Net levels where flow-guided attention runs (0: the latent grid).
            feature_mode: ``"stored"``, ``"recompute"`` (less memory, more compute) or ``"auto"``
                (stored when the features fit ``feature_memory_budget``, else recompute).
            feature_dtype: dtype of stored features.
            feature_memory_budget: bytes the stored features may take in ``"auto"`` mode; None:
                half of the host's available memory.
            trajectories: precomputed trajectories (skips the optical flow).
            latents: precomputed source latents (1, C, F, h, w) (skips VAE encoding).
            inversion: a source already inverted (:meth:`invert_video`, :meth:`FlattenInversion.load`);
                skips everything before sampling, and ``video`` may then be None.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.

        Returns:
            :class:`FlattenPipelineOutput`, or a tuple ``(frames,)`` if not ``return_dict``.
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"unknown output_type {output_type!r}; choose one of {', '.join(OUTPUT_TYPES)}")
        if inversion is None:
            if video is None:
                raise ValueError("give the source video, or an inversion of it")
            inversion = self.invert_video(
                video,
                num_inference_steps=num_inference_steps,
                num_inversion_steps=num_inversion_steps,
                inject_steps=inject_steps,
                generator=generator,
                flow_method=flow_method,
                attention_mode=attention_mode,
                flatten_variant=flatten_variant,
                flatten_levels=flatten_levels,
                feature_mode=feature_mode,
                feature_dtype=feature_dtype,
                feature_memory_budget=feature_memory_budget,
                trajectories=trajectories,
                latents=latents,
            )
        edited = self.sample(
            inversion,
            prompt,
            negative_prompt,
            guidance_scale=guidance_scale,
            eta=eta,
            generator=generator,
            attention_mode=attention_mode,
            flatten_variant=flatten_variant,
            callback_on_step_end=callback_on_step_end,
        )
        del inversion
        if output_type == "latent":
            result = edited
        else:
            result = self.decode_latents(edited)
            if output_type == "np":
                result = result.permute(0, 2, 3, 1).numpy()
            elif output_type == "pil":
                array = (result.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
                result = [PIL.Image.fromarray(frame) for frame in array]
        self.maybe_free_model_hooks()
        return FlattenPipelineOutput(frames=result) if return_dict else (result,)
