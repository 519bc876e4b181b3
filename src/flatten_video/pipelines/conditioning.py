"""Rows of a model batch and what conditions each (docs/architecture.md, "One seam for the model call").

A batch holds B videos of F frames, ``(B, C, F, h, w)``; row b is one video (a source row, the
unconditional or the conditional branch of guidance), and row b of every conditioning tensor
belongs to it. The backbone lays the rows out as its model wants them (the U-Net folds frames
into its batch, ``(B*F, ...)`` video-major, each row's conditioning repeated for its frames).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)


def tokenize_prompt(tokenizer, prompt: str, warn: bool = True) -> torch.Tensor:
    """(1, L) token ids of ``prompt`` padded or cut to the text encoder's length L, with (when
    ``warn``) one short warning naming the start of what was cut."""
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    # verbose=False: transformers would log its own 'sequence length is longer' line first.
    untruncated = tokenizer(prompt, padding="longest", return_tensors="pt", verbose=False).input_ids
    if warn and untruncated.shape[-1] > ids.shape[-1]:
        dropped = tokenizer.batch_decode(untruncated[:, tokenizer.model_max_length - 1 : -1])[0].strip()
        logger.warning("the prompt is longer than the text encoder's %d tokens; dropped: %r",
                       tokenizer.model_max_length, dropped if len(dropped) <= 60 else dropped[:57] + "...")
    return ids


@dataclass
class Conditioning:
    """The per-row inputs of a U-Net call besides the latents.

    Attributes:
        encoder_hidden_states: (B, L, D) text embeddings.
        added_cond_kwargs: extra conditions diffusers' U-Net takes by name (SDXL: ``text_embeds``
            (B, D'), ``time_ids`` (B, 6)); each tensor has one row per video.
        control_scale: (B,) how much a ControlNet steers each row (None: fully); 0 for a source
            row whose inversion ran without one.
    """

    encoder_hidden_states: torch.Tensor
    added_cond_kwargs: dict[str, torch.Tensor] = field(default_factory=dict)
    control_scale: torch.Tensor | None = None

    @property
    def num_rows(self) -> int:
        return self.encoder_hidden_states.shape[0]

    @classmethod
    def cat(cls, parts: list["Conditioning"]) -> "Conditioning":
        """The rows of ``parts``, in order."""
        scales = None
        if any(p.control_scale is not None for p in parts):
            scales = torch.cat([p.row_control_scale() for p in parts])
        return cls(
            torch.cat([p.encoder_hidden_states for p in parts]),
            {key: torch.cat([p.added_cond_kwargs[key] for p in parts]) for key in parts[0].added_cond_kwargs},
            scales,
        )

    def row_control_scale(self) -> torch.Tensor:
        """(B,) ControlNet share of every row (ones where unset)."""
        if self.control_scale is not None:
            return self.control_scale
        return torch.ones(self.num_rows, device=self.encoder_hidden_states.device)

    def unet_kwargs(self, frames: int) -> dict:
        """Keyword arguments of ``unet(sample, t, ...)`` for a batch with ``frames`` per row."""
        kwargs = {"encoder_hidden_states": self.encoder_hidden_states.repeat_interleave(frames, 0)}
        if self.added_cond_kwargs:
            kwargs["added_cond_kwargs"] = {k: v.repeat_interleave(frames, 0) for k, v in self.added_cond_kwargs.items()}
        return kwargs


def stack_rows(rows: list[tuple[torch.Tensor, Conditioning]]) -> tuple[torch.Tensor, Conditioning]:
    """One batch from (latents (b, C, F, h, w), conditioning of b rows) parts, in order."""
    return torch.cat([latents for latents, _ in rows]), Conditioning.cat([condition for _, condition in rows])
