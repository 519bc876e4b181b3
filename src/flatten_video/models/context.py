"""What FLATTEN is asked to do (:class:`FlattenConfig`) and the per-call state its processors read
(:class:`FlattenContext`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from .. import defaults
from ..choices import ATTENTION_MODES, FLATTEN_VARIANTS, FLOW_GUIDED_MODES  # noqa: F401 - re-exported
from ..validation import check_at_least, check_choice
from ..windows import check_windows

if TYPE_CHECKING:
    import torch

    from ..trajectories import Trajectories
    from .features import FeatureStore



@dataclass(frozen=True)
class FlattenConfig:
    """How FLATTEN runs: fixed for an inversion and every edit made from it.

    Attributes:
        attention_mode: one of :data:`ATTENTION_MODES`.
        variant: one of :data:`FLATTEN_VARIANTS`.
        levels: U-Net levels with flow-guided attention: 0 is the latent grid (the paper's only
            one), 1 half of it, ...
        window: latent frames per co-denoising window for long clips (docs/architecture.md,
            "Long clips"); 0, or a clip no longer than it, runs the exact method on the whole clip.
            For an image VAE latent frames are source frames.
        overlap: latent frames shared by consecutive windows.
        anchors: latent frames spread over the clip that join every window's attention.
        blocks: for a transformer backbone, the blocks whose self-attention runs flow-guided
            attention (None: every block); a U-Net uses ``levels`` instead.
    """

    attention_mode: str = defaults.ATTENTION_MODE
    variant: str = defaults.VARIANT
    levels: tuple[int, ...] = (0,)
    window: int = defaults.WINDOW
    overlap: int = defaults.OVERLAP
    anchors: int = defaults.ANCHORS
    blocks: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        check_choice("attention mode", self.attention_mode, ATTENTION_MODES)
        check_choice("FLATTEN variant", self.variant, FLATTEN_VARIANTS)
        levels = tuple(self.levels)
        if not levels:
            raise ValueError("flatten_levels must name at least one U-Net level (0: the latent grid)")
        for level in levels:
            check_at_least("a flatten level", level, 0)
        object.__setattr__(self, "levels", tuple(sorted(set(levels))))
        if self.blocks is not None:
            if not self.blocks:
                raise ValueError("blocks must name at least one transformer block, or be None for every block")
            for block in self.blocks:
                check_at_least("a flatten block", block, 0)
            object.__setattr__(self, "blocks", tuple(sorted(set(self.blocks))))
        check_windows(self.window, self.overlap, self.anchors)

    @property
    def flow_guided(self) -> bool:
        """Whether flow-guided attention runs, and so optical flow and trajectories are needed."""
        return self.attention_mode in FLOW_GUIDED_MODES

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "FlattenConfig":
        blocks = values.get("blocks")
        return cls(**{**values, "levels": tuple(values.get("levels", (0,))),
                      "blocks": None if blocks is None else tuple(blocks)})

    def windowed(self, num_latent_frames: int) -> bool:
        """Whether a clip of ``num_latent_frames`` latent frames is edited in windows rather than whole."""
        return 0 < self.window < num_latent_frames


@dataclass
class FlattenContext:
    """What the processors need to know about the video being processed.

    Attributes:
        num_latent_frames: F', latent frames per video in the model's batch (a window's, with
            its anchors, when it holds a window); U-Net batches are video-major (B*F', ...).
        attention_mode: one of :data:`ATTENTION_MODES`.
        variant: one of :data:`FLATTEN_VARIANTS`.
        trajectories: the trajectories of every latent grid (h, w) where flow-guided attention
            runs; grids without an entry get no flow-guided attention.
        features: the feature store that captures or injects features, or None.
        window_frames: (K,) the clip's latent frames the batch holds, in order, when it holds a
            window of a long clip; None when it holds the whole clip.
        phase: ``"inversion"`` or ``"sampling"`` while a pipeline runs one, for plug-ins whose
            behaviour differs between them (a ControlNet during inversion).
        blocks: the transformer blocks with flow-guided attention (None: every block).
        attention_backend: diffusers' dispatcher backend of the dense attention (None: its active
            one, PyTorch's SDPA).
    """

    num_latent_frames: int = 1
    attention_mode: str = defaults.ATTENTION_MODE
    variant: str = defaults.VARIANT
    trajectories: dict[tuple[int, int], "Trajectories"] = field(default_factory=dict)
    features: "FeatureStore | None" = None
    window_frames: "torch.Tensor | None" = None
    phase: str = ""
    blocks: "tuple[int, ...] | None" = None
    attention_backend: str | None = None

    def __post_init__(self) -> None:
        FlattenConfig(self.attention_mode, self.variant)  # one owner for both names' rules

    @classmethod
    def from_config(cls, config: FlattenConfig, num_latent_frames: int, trajectories=None, features=None) -> "FlattenContext":
        return cls(num_latent_frames, config.attention_mode, config.variant, dict(trajectories or {}), features,
                   blocks=config.blocks)

    @property
    def dense_temporal(self) -> bool:
        """Whether self-attention spans all frames of a video."""
        return self.attention_mode in ("dsta", "dsta+flatten")

    @property
    def flow_guided(self) -> bool:
        return self.attention_mode in FLOW_GUIDED_MODES

    def trajectories_for(self, num_tokens: int) -> "Trajectories | None":
        """The trajectories of the grid with ``num_tokens`` cells per frame, if FLATTEN runs there.

        U-Net levels halve both sides, so the cell count identifies the grid.
        """
        if not self.flow_guided:
            return None
        for (h, w), trajectories in self.trajectories.items():
            if h * w == num_tokens:
                return trajectories
        return None
