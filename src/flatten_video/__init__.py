"""flatten-video: training-free text-to-video editing with optical-flow-guided attention.

An implementation of FLATTEN (Cong et al., ICLR 2024) on diffusers' stock Stable Diffusion U-Net.
"""

from .attention import FlattenAttnProcessor, VideoGroupNorm, flow_guided_attention, install_flatten
from .context import ATTENTION_MODES, FLATTEN_VARIANTS, FlattenContext
from .features import FeatureStore
from .flow import estimate_flow
from .pipeline import FlattenInversion, FlattenPipeline, FlattenPipelineOutput
from .trajectories import Trajectories, sample_trajectories, sample_trajectory_pyramid

__all__ = [
    "ATTENTION_MODES",
    "FLATTEN_VARIANTS",
    "FeatureStore",
    "FlattenAttnProcessor",
    "FlattenContext",
    "FlattenInversion",
    "FlattenPipeline",
    "FlattenPipelineOutput",
    "Trajectories",
    "VideoGroupNorm",
    "estimate_flow",
    "flow_guided_attention",
    "install_flatten",
    "sample_trajectories",
    "sample_trajectory_pyramid",
]

__version__ = "0.1.0"
