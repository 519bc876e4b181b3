"""FLATTEN pipelines: the shared mixin, the Stable Diffusion pipeline, inversions and outputs."""

from .conditioning import Conditioning, fold_frames, stack_rows, unfold_frames
from .inversion import FlattenInversion
from .mixin import FlattenMixin
from .output import FlattenPipelineOutput, ModelLoadError
from .pipeline_flatten import FlattenPipeline
from .pipeline_flatten_xl import FlattenSDXLPipeline

__all__ = [
    "Conditioning",
    "FlattenInversion",
    "FlattenMixin",
    "FlattenPipeline",
    "FlattenPipelineOutput",
    "FlattenSDXLPipeline",
    "ModelLoadError",
    "fold_frames",
    "stack_rows",
    "unfold_frames",
]
