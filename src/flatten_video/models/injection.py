"""Where source features are injected (docs/architecture.md, The method, step 6), derived from a U-Net's config.

The paper names modules of SD 1.x/2.x: the residual branches of ``up_blocks.1.resnets.0/1`` and
``up_blocks.2.resnets.0``, and the self-attention query and key of ``up_blocks.1.attentions.1/2``,
``up_blocks.2.attentions.0/1/2`` and ``up_blocks.3.attentions.0``. Those are positions in the
decoder levels at 1/4, 1/2 and 1/1 of the latent grid (1/32, 1/16 and 1/8 of the image), so the
same rule gives the points of any ``UNet2DConditionModel`` whose decoder reaches those levels:
SDXL's decoder has three levels and no attention at the finest, so it gets its own names.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Decoder level (latent grid divided by 2**level) -> (ResNet indices, attention indices) injected.
POINTS_BY_LEVEL = {2: ((0, 1), (1, 2)), 1: ((0,), (0, 1, 2)), 0: ((), (0,))}


class InjectionUnavailable(ValueError):
    """The U-Net has no decoder layout that injection points can be derived from."""


@dataclass(frozen=True)
class InjectionSpec:
    """The modules whose features are recorded in inversion and injected in sampling.

    Attributes:
        resnets: ResNet blocks whose residual branch (``conv2``'s output) is injected.
        attentions: self-attention modules (``attn1``) whose query and key are injected.
    """

    resnets: tuple[str, ...]
    attentions: tuple[str, ...]

    @classmethod
    def from_unet(cls, unet) -> "InjectionSpec":
        """The spec of a diffusers ``UNet2DConditionModel`` (read from its config).

        Raises:
            InjectionUnavailable: the decoder lacks a level or a layer the rule needs.
        """
        config = unet.config
        up_types = list(config.up_block_types)
        layers = config.layers_per_block
        layers = list(reversed(layers)) if isinstance(layers, (list, tuple)) else [layers] * len(up_types)
        resnets, attentions, missing = [], [], []
        for level, (resnet_indices, attention_indices) in sorted(POINTS_BY_LEVEL.items(), reverse=True):
            block = len(up_types) - 1 - level  # every up block but the last upsamples
            if block < 0:
                missing.append(f"a decoder level at 1/{2 ** level} of the latent grid")
                continue
            depth = layers[block] + 1  # decoder blocks have one layer more than encoder blocks
            prefix = f"up_blocks.{block}"
            for index in resnet_indices:
                (resnets if index < depth else missing).append(f"{prefix}.resnets.{index}")
            if "CrossAttn" not in up_types[block] and block != len(up_types) - 1:
                missing.append(f"attention in {prefix}")
            elif "CrossAttn" in up_types[block]:
                for index in attention_indices:
                    name = f"{prefix}.attentions.{index}.transformer_blocks.0.attn1"
                    (attentions if index < depth else missing).append(name)
        if missing:
            raise InjectionUnavailable(
                "this U-Net lacks the layers that FLATTEN injects features at (a Stable Diffusion 1.x/2.x or XL "
                f"layout is expected): {', '.join(missing)}. Run with inject_steps=0 to edit without injection."
            )
        return cls(tuple(resnets), tuple(attentions))
