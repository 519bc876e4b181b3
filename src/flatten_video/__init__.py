"""flatten-video: training-free text-to-video editing with optical-flow-guided attention.

An implementation of FLATTEN (Cong et al., ICLR 2024) on diffusers' stock models, along two axes:
the backbone (the denoiser: Stable Diffusion's 2-D U-Net) and the editing method (how an edit starts
and what it injects). docs/architecture.md describes the package.

The names below load on first use (as diffusers' own package does), so ``flatten-video --help``
and the settings schema do not wait for torch and diffusers to import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

#: Public name -> the module that defines it.
_EXPORTS = {
    "estimate_flow": ".flow",
    "ATTENTION_MODES": ".choices",
    "FLATTEN_VARIANTS": ".choices",
    "FeatureStore": ".models",
    "FlattenAttnProcessor": ".models",
    "FlattenConfig": ".models",
    "FlattenContext": ".models",
    "InjectionSpec": ".models",
    "VideoGroupNorm": ".models",
    "flatten_installed": ".models",
    "install_flatten": ".models",
    "uninstall_flatten": ".models",
    "flow_guided_attention": ".ops",
    "Backbone": ".backbones",
    "UNet2DBackbone": ".backbones",
    "register_backbone": ".backbones",
    "Conditioning": ".pipelines",
    "EditMethod": ".pipelines",
    "EditRequest": ".pipelines",
    "EditStart": ".pipelines",
    "FlattenControlNetPipeline": ".pipelines",
    "FlattenSDXLControlNetPipeline": ".pipelines",
    "FlattenWanPipeline": ".pipelines",
    "WanBackbone": ".backbones",
    "FlattenInversion": ".pipelines",
    "register_method": ".pipelines",
    "compose_flows": ".latent_frames",
    "FlattenMixin": ".pipelines",
    "FlattenPipeline": ".pipelines",
    "FlattenPipelineOutput": ".pipelines",
    "FlattenSDXLPipeline": ".pipelines",
    "Trajectories": ".trajectories",
    "sample_trajectories": ".trajectories",
    "sample_trajectory_pyramid": ".trajectories",
}

__all__ = [
    "ATTENTION_MODES",
    "Backbone",
    "Conditioning",
    "EditMethod",
    "EditRequest",
    "EditStart",
    "FlattenControlNetPipeline",
    "FlattenSDXLControlNetPipeline",
    "FlattenWanPipeline",
    "UNet2DBackbone",
    "WanBackbone",
    "compose_flows",
    "register_backbone",
    "register_method",
    "FLATTEN_VARIANTS",
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


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'flatten_video' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and IDEs see
    from .backbones import Backbone, UNet2DBackbone, WanBackbone, register_backbone
    from .choices import ATTENTION_MODES, FLATTEN_VARIANTS
    from .latent_frames import compose_flows
    from .flow import estimate_flow
    from .models import (
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
        EditMethod,
        EditRequest,
        EditStart,
        FlattenControlNetPipeline,
        FlattenSDXLControlNetPipeline,
        FlattenInversion,
        FlattenMixin,
        FlattenPipeline,
        FlattenPipelineOutput,
        FlattenSDXLPipeline,
        register_method,
    )
    from .trajectories import Trajectories, sample_trajectories, sample_trajectory_pyramid
