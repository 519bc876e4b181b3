"""FLATTEN pipelines: the shared mixin, the Stable Diffusion pipelines, editing methods, starts and outputs."""

from ..backbones.unet2d import fold_frames, unfold_frames
from .conditioning import Conditioning, stack_rows
from .controlnet import FlattenControlNetPipeline, FlattenSDXLControlNetPipeline
from .inversion import EditStart, FlattenInversion
from .methods import METHODS, EditMethod, EditRequest, register_method
from .mixin import FlattenMixin
from .output import FlattenPipelineOutput, ModelLoadError
from .pipeline_flatten import FlattenPipeline
from .pipeline_flatten_wan import FlattenWanPipeline
from .pipeline_flatten_xl import FlattenSDXLPipeline
from .registry import PIPELINES, pipeline_for_index

__all__ = [
    "Conditioning",
    "EditMethod",
    "EditRequest",
    "EditStart",
    "FlattenControlNetPipeline",
    "FlattenInversion",
    "FlattenMixin",
    "FlattenPipeline",
    "FlattenPipelineOutput",
    "FlattenSDXLControlNetPipeline",
    "FlattenSDXLPipeline",
    "FlattenWanPipeline",
    "METHODS",
    "ModelLoadError",
    "PIPELINES",
    "fold_frames",
    "pipeline_for_index",
    "register_method",
    "stack_rows",
    "unfold_frames",
]
