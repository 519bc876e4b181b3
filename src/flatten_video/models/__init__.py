"""FLATTEN's changes to a stock diffusers U-Net: processors, video GroupNorm, injection points,
the feature store, and installing them for a call."""

from ..choices import FEATURE_MODES
from .attention import FlattenAttnProcessor, VideoGroupNorm
from .context import ATTENTION_MODES, FLATTEN_VARIANTS, FLOW_GUIDED_MODES, FlattenConfig, FlattenContext
from .features import FeatureStore, available_memory
from .injection import InjectionSpec, InjectionUnavailable
from .install import flatten_installed, install_flatten, is_flatten_installed, uninstall_flatten

__all__ = [
    "ATTENTION_MODES",
    "FEATURE_MODES",
    "FLATTEN_VARIANTS",
    "FLOW_GUIDED_MODES",
    "FeatureStore",
    "FlattenAttnProcessor",
    "FlattenConfig",
    "FlattenContext",
    "InjectionSpec",
    "InjectionUnavailable",
    "VideoGroupNorm",
    "available_memory",
    "flatten_installed",
    "install_flatten",
    "is_flatten_installed",
    "uninstall_flatten",
]
