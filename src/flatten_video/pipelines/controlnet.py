"""ControlNets inside FLATTEN's edit (docs/architecture.md, Plug-ins): condition maps per frame steer every row of
the U-Net batch through the residuals a diffusers ``ControlNetModel`` (or several) computes.

:class:`ControlNetMixin` adds the ControlNet to a FLATTEN pipeline through the U-Net seam
(:meth:`FlattenMixin.extra_unet_kwargs`): frames are folded into the ControlNet's batch like the
U-Net's, so a window of a long clip takes its own frames' maps. Diffusers' knobs keep their
meaning: ``controlnet_conditioning_scale``, ``control_guidance_start`` / ``control_guidance_end``
(fractions of the sampling steps), ``guess_mode``. Inversion runs without it unless
``control_inversion``; the source row of recompute mode then runs without it too, so it gives
back the features inversion recorded.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

from .. import defaults
from ..validation import check_fraction_window
from .conditioning import Conditioning
from .schedule import sampling_timesteps
from .pipeline_flatten import FlattenPipeline
from .pipeline_flatten_xl import FlattenSDXLPipeline


@dataclass
class ControlState:
    """What the ControlNet does during one call.

    Attributes:
        images: one (F, 3, H, W) map tensor in [0, 1] per ControlNet, on the device.
        scales: the residuals' weight, one per ControlNet.
        sampling_timesteps: the sampling timesteps inside the guidance window.
        guess_mode: diffusers' guess mode (the ControlNet sees no prompt).
        inversion: whether inversion runs with the ControlNet too.
    """

    images: list[torch.Tensor]
    scales: list[float]
    sampling_timesteps: set[int]
    guess_mode: bool
    inversion: bool


def check_controlnet(unet, controlnet) -> None:
    """A ControlNet must read the U-Net's text embedding: one clear line when it cannot."""
    nets = controlnet.nets if isinstance(controlnet, MultiControlNetModel) else [controlnet]
    for net in nets:
        if net.config.cross_attention_dim != unet.config.cross_attention_dim:
            raise ValueError(
                f"this ControlNet was made for another model family: it reads text embeddings of width "
                f"{net.config.cross_attention_dim}, the U-Net gives {unet.config.cross_attention_dim}"
            )


class ControlNetMixin:
    """A ControlNet (``self.controlnet``, one or a ``MultiControlNetModel``) in a FLATTEN pipeline."""

    _control: ControlState | None = None

    def _register_controlnet(self, controlnet) -> None:
        """Register ``controlnet`` (one, a list, or a ``MultiControlNetModel``) after checking it fits the U-Net."""
        if isinstance(controlnet, (list, tuple)):
            controlnet = MultiControlNetModel(controlnet)
        check_controlnet(self.unet, controlnet)
        self.register_modules(controlnet=controlnet)

    @contextmanager
    def _control_enabled(
        self,
        control_image,
        *,
        num_inference_steps: int,
        controlnet_conditioning_scale: float | list[float] = 1.0,
        control_guidance_start: float = 0.0,
        control_guidance_end: float = 1.0,
        guess_mode: bool = False,
        control_inversion: bool = False,
    ):
        """The ControlNet on for the calls inside the block (inversion and sampling).

        Args:
            control_image: the maps, (F, 3, H, W) in [0, 1], one tensor per ControlNet (a list
                for several); F and the frame size are the source video's.
            num_inference_steps: the sampling steps the guidance window is a fraction of.
        """
        images = control_image if isinstance(control_image, (list, tuple)) else [control_image]
        count = len(self.controlnet.nets) if isinstance(self.controlnet, MultiControlNetModel) else 1
        if len(images) != count:
            raise ValueError(f"{len(images)} condition video(s) for {count} ControlNet(s)")
        scales = controlnet_conditioning_scale
        scales = list(scales) if isinstance(scales, (list, tuple)) else [scales] * count
        check_fraction_window(control_guidance_start, control_guidance_end, "control_guidance_start", "control_guidance_end")
        timesteps = sampling_timesteps(self.scheduler, num_inference_steps)
        # diffusers' rule: step i is controlled when i/N >= start and (i+1)/N <= end.
        kept = {t for i, t in enumerate(timesteps)
                if i / len(timesteps) >= control_guidance_start and (i + 1) / len(timesteps) <= control_guidance_end}
        device = self._execution_device
        self._control = ControlState(
            [image.to(device, self.controlnet.dtype) for image in images], scales, kept, guess_mode, control_inversion
        )
        try:
            yield self._control
        finally:
            self._control = None

    def source_conditioning(self, source_prompt: str, latents: torch.Tensor) -> Conditioning:
        rows = super().source_conditioning(source_prompt, latents)
        if self._control is not None and not self._control.inversion:
            rows.control_scale = torch.zeros(rows.num_rows, device=rows.encoder_hidden_states.device)
        return rows

    def extra_unet_kwargs(self, sample: torch.Tensor, timestep: int, conditioning: Conditioning, unet_kwargs: dict) -> dict:
        """ControlNet residuals for the folded batch, weighted per row; none when it is off."""
        state, context = self._control, self.flatten_context
        if state is None or context is None:
            return {}
        active = state.inversion if context.phase == "inversion" else timestep in state.sampling_timesteps
        rows = conditioning.row_control_scale()
        if not active or not bool(rows.any()):
            return {}
        videos = conditioning.num_rows
        frames = sample.shape[0] // videos
        pick = context.window_frames
        images = [image if pick is None else image.index_select(0, pick.to(image.device)) for image in state.images]
        images = [image.repeat(videos, 1, 1, 1) for image in images]
        down, mid = self.controlnet(
            sample.to(self.controlnet.dtype),
            timestep,
            encoder_hidden_states=unet_kwargs["encoder_hidden_states"].to(self.controlnet.dtype),
            controlnet_cond=images if isinstance(self.controlnet, MultiControlNetModel) else images[0],
            conditioning_scale=state.scales if isinstance(self.controlnet, MultiControlNetModel) else state.scales[0],
            guess_mode=state.guess_mode,
            added_cond_kwargs=unet_kwargs.get("added_cond_kwargs"),
            return_dict=False,
        )
        weight = rows.to(sample.dtype).repeat_interleave(frames).view(-1, 1, 1, 1)
        return dict(
            down_block_additional_residuals=[residual.to(sample.dtype) * weight for residual in down],
            mid_block_additional_residual=mid.to(sample.dtype) * weight,
        )

    def invert_video(self, video, *, control_image=None, controlnet_conditioning_scale: float | list[float] = 1.0,
                     control_guidance_start: float = 0.0, control_guidance_end: float = 1.0, guess_mode: bool = False,
                     control_inversion: bool = False, **kwargs):
        """:meth:`FlattenMixin.invert_video`, steered by the ControlNet when ``control_inversion``
        (the ControlNet arguments as for ``__call__``; without ``control_image`` the inversion is
        the plain one, as it is whenever ``control_inversion`` is off)."""
        if control_image is None:
            return super().invert_video(video, **kwargs)
        steps = kwargs.get("num_inference_steps", defaults.NUM_INFERENCE_STEPS)
        with self._control_enabled(
            control_image, num_inference_steps=steps, controlnet_conditioning_scale=controlnet_conditioning_scale,
            control_guidance_start=control_guidance_start, control_guidance_end=control_guidance_end,
            guess_mode=guess_mode, control_inversion=control_inversion,
        ):
            return super().invert_video(video, **kwargs)

    def __call__(
        self,
        video=None,
        prompt: str | list[str] = "",
        negative_prompt: str | list[str] = "",
        *,
        control_image=None,
        controlnet_conditioning_scale: float | list[float] = 1.0,
        control_guidance_start: float = 0.0,
        control_guidance_end: float = 1.0,
        guess_mode: bool = False,
        control_inversion: bool = False,
        **kwargs,
    ):
        """The FLATTEN edit (:meth:`FlattenMixin.__call__`, same arguments) steered by the ControlNet:
        the one way to switch it on (``invert_video`` takes the same arguments).

        Args:
            control_image: condition maps of the source frames, (F, 3, H, W) in [0, 1] (see
                :mod:`flatten_video.control_maps`), one per ControlNet (a list for several).
            controlnet_conditioning_scale: weight of the residuals (0: exactly no ControlNet).
            control_guidance_start, control_guidance_end: the fraction of sampling steps it steers.
            guess_mode: diffusers' guess mode.
            control_inversion: steer inversion too (default: sampling only).
        """
        if control_image is None:
            raise ValueError("give control_image: the condition maps of the source frames")
        # The schedule the edit will run (the caller's, the inversion's or the paper's): the window's unit.
        steps = self.resolve_edit(kwargs.get("inversion"), num_inference_steps=kwargs.get("num_inference_steps"))[1]["num_inference_steps"]
        with self._control_enabled(
            control_image, num_inference_steps=steps, controlnet_conditioning_scale=controlnet_conditioning_scale,
            control_guidance_start=control_guidance_start, control_guidance_end=control_guidance_end,
            guess_mode=guess_mode, control_inversion=control_inversion,
        ):
            return super().__call__(video, prompt, negative_prompt, **kwargs)


class FlattenControlNetPipeline(ControlNetMixin, FlattenPipeline):
    """:class:`FlattenPipeline` (SD 1.x/2.x) with ControlNets: ``FlattenControlNetPipeline.from_pretrained(
    model, controlnet=ControlNetModel.from_pretrained(...))`` or ``(**pipe.components, controlnet=...)``
    (a FLATTEN or Stable Diffusion pipeline's; a ``StableDiffusionControlNetPipeline``'s as they are)."""

    model_cpu_offload_seq = "text_encoder->unet->controlnet->vae"

    def __init__(self, vae, text_encoder, tokenizer, unet, controlnet, scheduler, inverse_scheduler=None,
                 safety_checker=None, feature_extractor=None, image_encoder=None):
        super().__init__(vae, text_encoder, tokenizer, unet, scheduler, inverse_scheduler)
        self._register_controlnet(controlnet)


class FlattenSDXLControlNetPipeline(ControlNetMixin, FlattenSDXLPipeline):
    """:class:`FlattenSDXLPipeline` with SDXL ControlNets."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->unet->controlnet->vae"

    def __init__(self, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, controlnet, scheduler,
                 inverse_scheduler=None, force_zeros_for_empty_prompt: bool = True, image_encoder=None,
                 feature_extractor=None):
        super().__init__(vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler, inverse_scheduler,
                         force_zeros_for_empty_prompt)
        self._register_controlnet(controlnet)


