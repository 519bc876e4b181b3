"""flatten-video: training-free text-to-video editing with optical-flow-guided attention.

An implementation of FLATTEN (Cong et al., ICLR 2024) on diffusers' stock Stable Diffusion U-Net.
"""

from .flow import estimate_flow
from .models import (
    ATTENTION_MODES,
    FLATTEN_VARIANTS,
    FeatureStore,
    FlattenAttnProcessor,
    FlattenConfig,
    FlattenContext,
    InjectionSpec,
    VideoGroupNorm,
    flatten_installed,
    install_flatten,
    uninstall_flatten,
)
from .ops import flow_guided_attention
from .pipelines import (
    Conditioning,
    FlattenInversion,
    FlattenMixin,
    FlattenPipeline,
    FlattenPipelineOutput,
    FlattenSDXLPipeline,
)
from .trajectories import Trajectories, sample_trajectories, sample_trajectory_pyramid

__all__ = [
    "ATTENTION_MODES",
    "FLATTEN_VARIANTS",
    "Conditioning",
    "FeatureStore",
    "FlattenAttnProcessor",
    "FlattenConfig",
    "FlattenContext",
    "FlattenInversion",
    "FlattenMixin",
    "FlattenPipeline",
    "FlattenPipelineOutput",
    "FlattenSDXLPipeline",
    "InjectionSpec",
    "Trajectories",
    "VideoGroupNorm",
    "estimate_flow",
    "flatten_installed",
    "flow_guided_attention",
    "install_flatten",
    "sample_trajectories",
    "sample_trajectory_pyramid",
    "uninstall_flatten",
]

__version__ = "0.1.0"
