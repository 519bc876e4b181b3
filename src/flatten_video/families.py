"""Model families: what the command line, the page and the pipelines must know of a checkpoint's
kind before its weights load (docs/architecture.md, "Backbones"). Imports nothing, like
:mod:`flatten_video.choices`: the settings check these facts in a blink.

A family is a kind of denoiser with its VAE: Stable Diffusion's image U-Net (1.x, 2.x and XL: one
latent frame per source frame, frame sides multiples of 8) or Wan's video transformer (a causal 3-D
VAE with 4 source frames per latent frame after the first, sides multiples of 16: 8 px a latent,
2 latents a patch). Each family's pipelines and backbone read their facts from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from .choices import ATTENTION_MODES


@dataclass(frozen=True)
class Family:
    """What a family of checkpoints takes.

    Attributes:
        name: ``"sd"`` or ``"wan"``.
        label: how messages name it.
        temporal_factor: source frames per latent frame after the first (F = k*m + 1).
        side_multiple: frame sides in pixels must be multiples of this.
        size_multiple: automatic working sizes are rounded to multiples of this.
        methods: the editing methods its pipelines run.
        attention_modes: the self-attention modes it runs.
        controlnets: whether ControlNets exist for it.
        denoiser: the component FLATTEN changes (what its LoRAs' tensors are named after).
    """

    name: str
    label: str
    temporal_factor: int
    side_multiple: int
    size_multiple: int
    methods: tuple[str, ...]
    attention_modes: tuple[str, ...] = ATTENTION_MODES
    controlnets: bool = True
    denoiser: str = "unet"


#: Family name -> family.
FAMILIES = {
    "sd": Family("sd", "Stable Diffusion", temporal_factor=1, side_multiple=8, size_multiple=64,
                 methods=("inversion", "noise", "trajectory-noise")),
    # Wan's own attention is already dense over every frame, so the per-frame modes do not exist.
    "wan": Family("wan", "Wan", temporal_factor=4, side_multiple=16, size_multiple=16, methods=("flowedit", "inversion"),
                  attention_modes=("dsta", "dsta+flatten"), controlnets=False, denoiser="transformer"),
}
