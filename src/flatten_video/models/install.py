"""Turning a stock diffusers U-Net into FLATTEN's video U-Net and back, in place (docs/architecture.md, The method, step 4).

:func:`install_flatten` changes three things, without forking diffusers:

- every self-attention (found by meaning, as diffusers' ``PAGMixin`` finds it: an attention module
  that is not cross-attention) gets a :class:`~flatten_video.models.attention.FlattenAttnProcessor`: dense
  spatio-temporal attention over all frames, then flow-guided attention before ``to_out``;
- the GroupNorms of the ResNet blocks and ``conv_norm_out`` become
  :class:`~flatten_video.models.attention.VideoGroupNorm`, taking statistics over a whole video;
- the residual branches of the injection ResNets pass through ``context.features``.

:func:`uninstall_flatten` puts back exactly what was there, so a U-Net shared with other
pipelines is FLATTEN's only while :func:`flatten_installed` holds it.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D

from .attention import FlattenAttnProcessor, VideoGroupNorm
from .context import FlattenContext
from .injection import InjectionSpec, InjectionUnavailable

#: Attribute of the U-Net holding what :func:`install_flatten` replaced (not a submodule).
_STATE = "_flatten_originals"


def self_attention_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of every self-attention of ``model``: a diffusers attention module (the
    classic ``Attention`` or one of the newer ``AttentionModuleMixin`` classes) that is not
    cross-attention, whatever it is called."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, (Attention, AttentionModuleMixin)) and not module.is_cross_attention
    ]


def injection_spec(unet) -> InjectionSpec | None:
    """The U-Net's injection points, or None where none can be derived."""
    try:
        return InjectionSpec.from_unet(unet)
    except InjectionUnavailable:
        return None


def install_flatten(unet: torch.nn.Module, context: FlattenContext, injection: InjectionSpec | None = None) -> None:
    """Make a diffusers ``UNet2DConditionModel`` FLATTEN's inflated video U-Net, in place.

    Args:
        context: what the processors read at every call (frames per video, mode, trajectories,
            feature store); the caller may change it between calls.
        injection: where features go through ``context.features`` (default: derived from the
            U-Net's config; none where it cannot be derived).

    Installing again first undoes the previous installation, so :func:`uninstall_flatten`
    always restores the stock modules.
    """
    uninstall_flatten(unet)
    if injection is None:
        injection = injection_spec(unet) or InjectionSpec((), ())
    originals = {"processors": [], "norms": [], "hooks": []}

    for name, module in self_attention_modules(unet):
        originals["processors"].append((module, module.processor))
        module.set_processor(FlattenAttnProcessor(context, name, name in injection.attentions))

    def wrap(parent: torch.nn.Module, attribute: str) -> None:
        norm = getattr(parent, attribute, None)
        if isinstance(norm, torch.nn.GroupNorm):
            setattr(parent, attribute, VideoGroupNorm(norm, context))
            originals["norms"].append((parent, attribute, norm))

    for module in unet.modules():
        if isinstance(module, ResnetBlock2D):
            wrap(module, "norm1")
            wrap(module, "norm2")
    wrap(unet, "conv_norm_out")

    modules = dict(unet.named_modules())
    for name in injection.resnets:

        def hook(module, inputs, output, name=name):
            store = context.features
            return output if store is None else store.process(name, output)

        # First among the hooks: others on conv2 see the layer's output as the U-Net uses it.
        originals["hooks"].append(modules[name].conv2.register_forward_hook(hook, prepend=True))
    setattr(unet, _STATE, originals)


def uninstall_flatten(unet: torch.nn.Module) -> None:
    """Restore the processors, norms and hooks :func:`install_flatten` replaced; no-op if none."""
    originals = unet.__dict__.pop(_STATE, None)
    if originals is None:
        return
    for handle in originals["hooks"]:
        handle.remove()
    for parent, attribute, norm in originals["norms"]:
        setattr(parent, attribute, norm)
    for module, processor in originals["processors"]:
        module.set_processor(processor)


def is_flatten_installed(unet: torch.nn.Module) -> bool:
    return _STATE in unet.__dict__


@contextmanager
def flatten_installed(unet: torch.nn.Module, context: FlattenContext, injection: InjectionSpec | None = None):
    """:func:`install_flatten` for the duration of a ``with`` block, undone even when it raises."""
    install_flatten(unet, context, injection)
    try:
        yield context
    finally:
        uninstall_flatten(unet)
