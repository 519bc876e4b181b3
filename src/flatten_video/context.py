"""The state the U-Net's processors and hooks read during one edit, owned by the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .features import FeatureStore
    from .trajectories import Trajectories

#: Self-attention of the inflated U-Net, for the paper's ablations (Table 2):
#: ``spatial`` is the image model (per-frame attention), ``dsta`` dense spatio-temporal
#: attention, ``flatten`` per-frame attention followed by flow-guided attention, and
#: ``dsta+flatten`` the full method.
ATTENTION_MODES = ("spatial", "dsta", "flatten", "dsta+flatten")
#: The modes that run flow-guided attention, and so need optical flow and trajectories.
FLOW_GUIDED_MODES = ("flatten", "dsta+flatten")

#: How flow-guided attention gets its query and key (paper, Sec. 4.4): ``II`` uses the dense
#: attention's output H as query, key and value; ``I`` re-projects H through to_q/to_k/to_v;
#: ``source-qk`` uses the block's own query and key with value H.
FLATTEN_VARIANTS = ("II", "I", "source-qk")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
    return value


@dataclass
class FlattenContext:
    """What the processors need to know about the video being processed.

    Attributes:
        num_frames: F, frames per video; U-Net batches are video-major (B*F, ...).
        attention_mode: one of :data:`ATTENTION_MODES`.
        variant: one of :data:`FLATTEN_VARIANTS`.
        trajectories: the trajectories of every latent grid (h, w) where flow-guided attention
            runs; grids without an entry get no flow-guided attention.
        features: the feature store that captures or injects features, or None.
    """

    num_frames: int = 1
    attention_mode: str = "dsta+flatten"
    variant: str = "II"
    trajectories: dict[tuple[int, int], "Trajectories"] = field(default_factory=dict)
    features: "FeatureStore | None" = None

    def __post_init__(self) -> None:
        check_choice("attention mode", self.attention_mode, ATTENTION_MODES)
        check_choice("FLATTEN variant", self.variant, FLATTEN_VARIANTS)

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
