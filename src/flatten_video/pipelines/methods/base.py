"""Axis 2, the editing method: how an edit starts and what sampling injects
(docs/architecture.md, "Axis 2: the method").

A method is one small unit: from an :class:`EditRequest` (the source, the config, the schedule,
its own options) and the source's trajectories it makes the :class:`~flatten_video.pipelines.
inversion.EditStart` that sampling starts from. The pipeline computes the flow and trajectories
the method asks for, then hands over. A new method is one module and one line in :data:`METHODS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ... import defaults
from ...models.context import FlattenConfig
from ...timing import timed
from ...trajectories import Trajectories
from ...validation import check_choice


@dataclass(frozen=True, eq=False)
class EditRequest:
    """Everything an edit's start is made from: one field per option, so a new option is one field.

    Attributes:
        frames: (F, 3, H, W) source frames in [0, 1], F source frames.
        config: how FLATTEN runs.
        num_inference_steps: the sampling schedule the start is made for.
        num_inversion_steps, inject_steps: inversion's steps and the sampling steps that get the
            source features.
        generator: seeds the VAE posterior sample, the trajectories and any noise.
        flow_method: ``"raft"`` or ``"dis"``.
        feature_mode, feature_dtype, feature_memory_budget: how source features are held (dtype
            None: the denoiser's).
        trajectories: precomputed trajectories (skips the optical flow).
        latents: precomputed source latents (1, C, F', h, w) (skips VAE encoding).
        flows: the source's forward flows (F-1, 2, H, W), when already estimated.
        source_prompt: the prompt the source is seen with (the paper's: empty).
    """

    frames: torch.Tensor
    config: FlattenConfig
    num_inference_steps: int = defaults.NUM_INFERENCE_STEPS
    num_inversion_steps: int = defaults.NUM_INVERSION_STEPS
    inject_steps: int = defaults.INJECT_STEPS
    generator: torch.Generator | None = None
    flow_method: str = "raft"
    feature_mode: str = "auto"
    feature_dtype: torch.dtype | None = None
    feature_memory_budget: int | None = None
    trajectories: dict[tuple[int, int], Trajectories] | None = None
    latents: torch.Tensor | None = None
    flows: torch.Tensor | None = None
    source_prompt: str = defaults.SOURCE_PROMPT


class EditMethod:
    """How an edit starts.

    Class attributes:
        name: the method's name (``--method``).
        options: the :class:`EditRequest` fields only this method reads; the others' rules are
            not checked for it (a noise start inverts nothing, so its inversion steps do not matter).
        sampler: the sampler that edits from its start: ``"ddim"`` (the Stable Diffusion
            pipelines) or ``"flow"`` (flow-matching models: Wan).
    """

    name: ClassVar[str]
    options: ClassVar[tuple[str, ...]] = ()
    sampler: ClassVar[str] = "ddim"

    def trajectory_levels(self, config: FlattenConfig) -> tuple[int, ...]:
        """The levels whose trajectories the method needs: the config's where flow-guided
        attention runs, none otherwise."""
        return config.levels if config.flow_guided else ()

    def start(self, pipe, request: EditRequest, trajectories: dict, timings: dict):
        """The start of sampling for ``request``; ``trajectories`` of :meth:`trajectory_levels`;
        ``timings`` gets the seconds of its stages."""
        raise NotImplementedError

    @staticmethod
    def source_latents(pipe, request: EditRequest, timings: dict) -> torch.Tensor:
        """The source latents (1, C, F', h, w): the request's, else the VAE's encoding of its frames
        (timed as ``encode``)."""
        if request.latents is not None:
            return request.latents
        with timed(timings, "encode", pipe._execution_device):
            return pipe.encode_video(request.frames, request.generator)


class InversionMethod(EditMethod):
    """A method whose start inverts the source latents (:meth:`invert`) for sampling to inject from."""

    def start(self, pipe, request: EditRequest, trajectories: dict, timings: dict):
        latents = self.source_latents(pipe, request, timings)
        with timed(timings, "invert", pipe._execution_device):
            inversion = self.invert(pipe, latents, trajectories, request)
        inversion.timings = timings
        return inversion

    def invert(self, pipe, latents: torch.Tensor, trajectories: dict, request: EditRequest):
        """The inversion of ``latents`` with FLATTEN on, holding what sampling injects."""
        raise NotImplementedError


#: (sampler, method name) -> method: one name may have one method per sampler (``inversion`` is
#: DDIM inversion for Stable Diffusion and ODE inversion for flow models). A new method is one
#: :func:`register_method` call.
METHODS: dict[tuple[str, str], EditMethod] = {}


def register_method(method: EditMethod) -> EditMethod:
    METHODS[(method.sampler, method.name)] = method
    return method


def method_names(sampler: str) -> tuple[str, ...]:
    """The names of the methods registered for ``sampler``, in registration order."""
    return tuple(name for kind, name in METHODS if kind == sampler)


def get_method(name: str, sampler: str = "ddim") -> EditMethod:
    """The method ``name`` for ``sampler``; ``ValueError`` naming the known ones otherwise."""
    check_choice("editing method", name, method_names(sampler))
    return METHODS[(sampler, name)]
