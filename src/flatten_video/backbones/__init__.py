"""Axis 1, the backbone: what FLATTEN needs from a denoiser, one adapter per kind of model."""

from .base import BACKBONES, Backbone, backbone_for, register_backbone
from .unet2d import UNet2DBackbone, fold_frames, unfold_frames
from .wan import WanBackbone

__all__ = ["BACKBONES", "Backbone", "UNet2DBackbone", "WanBackbone", "backbone_for", "fold_frames", "register_backbone", "unfold_frames"]
