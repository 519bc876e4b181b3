"""FlowEdit's start (Kulikov et al. 2024; docs/architecture.md, "Backbones: Wan"): inversion-free,
so the start is the source latents themselves and the edit is all in sampling
(:func:`~flatten_video.pipelines.samplers.flowedit`)."""

from __future__ import annotations

from ...choices import METHOD_OPTIONS
from ..inversion import EditStart
from .base import EditMethod, EditRequest, register_method


class FlowEditStart(EditMethod):
    """The source latents x_src, for a flow model's pipeline to edit with FlowEdit."""

    name = "flowedit"
    sampler = "flow"
    options = METHOD_OPTIONS["flowedit"]

    def start(self, pipe, request: EditRequest, trajectories: dict, timings: dict) -> EditStart:
        return EditStart(latents=self.source_latents(pipe, request, timings), trajectories=trajectories,
                         config=request.config, num_inference_steps=request.num_inference_steps, method=self.name,
                         source_prompt=request.source_prompt, timings=timings)


register_method(FlowEditStart())
