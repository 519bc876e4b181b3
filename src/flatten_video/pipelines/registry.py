"""Which FLATTEN pipeline edits a checkpoint, read from its ``model_index.json``: by the class of
its denoiser and the components that tell its family apart, not by its pipeline's name (fine-tunes
are saved under many). A new pipeline is one entry in :data:`PIPELINES`; its backbone comes with
its denoiser (:data:`flatten_video.backbones.BACKBONES`)."""

from __future__ import annotations

from dataclasses import dataclass

from .mixin import FlattenMixin
from .pipeline_flatten import FlattenPipeline
from .pipeline_flatten_wan import FlattenWanPipeline
from .pipeline_flatten_xl import FlattenSDXLPipeline


@dataclass(frozen=True)
class PipelineEntry:
    """A checkpoint layout a FLATTEN pipeline edits.

    Attributes:
        pipeline: the pipeline class.
        family: what the checkpoints are, for messages.
        denoiser: (component, class name) of the model FLATTEN changes.
        requires: other components the layout has (SDXL: a second text encoder).
    """

    pipeline: type[FlattenMixin]
    family: str
    denoiser: tuple[str, str]
    requires: tuple[str, ...] = ()
    refuses: tuple[tuple[str, str], ...] = ()  # (model_index.json key, why a checkpoint that sets it is refused)
    refused_pipelines: tuple[tuple[str, str], ...] = ()  # (pipeline class saved, why it is refused)

    def refusal(self, index: dict) -> str | None:
        """Why a checkpoint of this denoiser cannot be edited (it needs inputs the edit lacks), or None."""
        why = dict(self.refused_pipelines).get(index.get("_class_name"))
        return why or next((why for component, why in self.refuses
                            if index.get(component) not in (None, False, [None, None])), None)

    def matches(self, index: dict) -> bool:
        component, cls = self.denoiser
        entry = index.get(component)
        named = isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1] == cls
        return named and all(isinstance(index.get(name), (list, tuple)) and index[name][1] for name in self.requires)


#: Most specific first: the first entry that matches a checkpoint edits it.
PIPELINES: list[PipelineEntry] = [
    PipelineEntry(FlattenSDXLPipeline, "Stable Diffusion XL", ("unet", "UNet2DConditionModel"), ("text_encoder_2",)),
    PipelineEntry(FlattenPipeline, "Stable Diffusion 1.x/2.x", ("unet", "UNet2DConditionModel")),
    PipelineEntry(FlattenWanPipeline, "Wan 2.1 / 2.2 A14B text-to-video", ("transformer", "WanTransformer3DModel"), refuses=(
        ("image_encoder", "an image-to-video checkpoint, which needs an image to start from"),
        ("expand_timesteps", "Wan 2.2 TI2V-5B, whose per-token timesteps and 48-channel VAE this version does not run yet"),
    ), refused_pipelines=(
        ("WanImageToVideoPipeline", "an image-to-video checkpoint, which needs an image to start from"),
    )),
]


def pipeline_for_index(index: dict) -> type[FlattenMixin]:
    """The FLATTEN pipeline for a checkpoint whose ``model_index.json`` is ``index``.

    An empty index (unreadable: loading says why) gets the Stable Diffusion pipeline.

    Raises:
        ValueError: in one line, when no FLATTEN pipeline edits such a checkpoint.
    """
    if not index:
        return FlattenPipeline
    for entry in PIPELINES:
        if entry.matches(index):
            why = entry.refusal(index)
            if why:
                raise ValueError(f"flatten-video cannot edit with {index.get('_class_name', 'this checkpoint')}: it is {why}")
            return entry.pipeline
    denoisers = [f"{name} ({value[1]})" for name, value in index.items()
                 if isinstance(value, (list, tuple)) and len(value) == 2 and name in ("unet", "transformer")]
    known = "; ".join(entry.family for entry in PIPELINES)
    raise ValueError(
        f"flatten-video cannot edit with a {index.get('_class_name', 'pipeline')} checkpoint"
        f"{' (denoiser: ' + ', '.join(denoisers) + ')' if denoisers else ''}; it edits with: {known}"
    )
