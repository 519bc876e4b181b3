"""The options of ``eval`` and ``bench`` and the metrics' defaults, importable without torch: the
command line builds these parsers (``flatten-video bench --help``) in a blink and loads the
libraries only for the work."""

from __future__ import annotations

import argparse

from ..app.settings import EditSettings, RuntimeSettings, add_arguments
from ..choices import FLOW_METHODS
from .dataset import EDITS

DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
DEFAULT_PICK_MODEL = "yuvalkirstain/PickScore_v1"
DEFAULT_PICK_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"

#: CLIP-F's frame pairs: option value -> what the mean is over (the first is the default).
FRAME_PAIRS = {"all": "all ordered pairs of distinct frames", "consecutive": "consecutive frames"}
DEFAULT_FRAME_PAIRS = "all"

#: Paper Table 2 rows: ablation name -> (attention mode, flatten variant).
ABLATIONS = {
    "base": ("spatial", "II"),
    "dsta": ("dsta", "II"),
    "flatten": ("flatten", "II"),
    "full": ("dsta+flatten", "II"),
    "combo-I": ("dsta+flatten", "I"),
}

#: Metric options that decide a score, recorded with each item.
METRIC_OPTIONS = ("clip_model", "pick_model", "pick_processor", "frame_pairs")


def add_metric_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("metrics")
    group.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL, help=f"CLIP for CLIP-T/CLIP-F, hub id or folder (default: {DEFAULT_CLIP_MODEL})")
    group.add_argument("--pick-model", default=DEFAULT_PICK_MODEL, help=f"PickScore model, hub id or folder (default: {DEFAULT_PICK_MODEL})")
    group.add_argument("--pick-processor", default=DEFAULT_PICK_PROCESSOR, help=f"PickScore's processor (default: {DEFAULT_PICK_PROCESSOR})")
    group.add_argument("--no-pick-score", action="store_true", help="skip PickScore (its model is ~4 GB)")
    group.add_argument(
        "--frame-pairs", choices=tuple(FRAME_PAIRS), default=DEFAULT_FRAME_PAIRS,
        help=f"frame pairs of CLIP-F: all ({FRAME_PAIRS['all']}, as the paper and LOVEU-TGVE's evaluation) "
        f"or consecutive (default: {DEFAULT_FRAME_PAIRS})",
    )


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("edited", help="the edited video (file or folder of frames)")
    parser.add_argument("source", help="the source video it was made from (file or folder of frames)")
    parser.add_argument("--prompt", "-p", required=True, help="the edit prompt")
    parser.add_argument("--frames", type=int, default=32, help="frames to compare (default: 32)")
    parser.add_argument("--stride", type=int, default=None, help="stride the edit took from the source, as in edit (default: total // frames)")
    parser.add_argument("--width", type=int, default=None, help="working width, as in edit")
    parser.add_argument("--height", type=int, default=None, help="working height, as in edit")
    parser.add_argument("--crop", action="store_true", help="center-crop, as in edit")
    parser.add_argument("--flow", choices=FLOW_METHODS, default="raft", help="flow for Ewarp (default: raft)")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_metric_arguments(parser)


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The edit options of the settings schema adapted to a dataset, plus the benchmark's own."""
    parser.add_argument("data_dir", metavar="DATA_DIR", help="LOVEU-TGVE-2023 folder: captions CSV and <subset>/480p_frames/<video>/")
    add_arguments(parser, RuntimeSettings)
    add_arguments(
        parser, EditSettings, exclude=("prompt",), by_family=True,  # prompts come from the CSV
        defaults=dict(width=512, height=512),
        helps=dict(
            width="working width in pixels (default: 512, as in the paper)",
            height="working height in pixels (default: 512, as in the paper)",
            side_by_side="write source | edit side by side in the item videos",
        ),
    )
    parser.add_argument("--output", "-o", default="tgve-results", help="output folder (default: tgve-results)")
    group = parser.add_argument_group("benchmark")
    group.add_argument("--csv", default=None, help="captions CSV (default: the one in DATA_DIR)")
    group.add_argument("--ablation", choices=tuple(ABLATIONS), default=None, help="a row of the paper's Table 2 (overrides --attention/--variant; results in OUT/<ablation>/)")
    group.add_argument("--subset", default=None, help="only these subsets, comma separated (e.g. DAVIS_480p)")
    group.add_argument("--videos", default=None, help="only these videos, comma separated")
    group.add_argument("--edits", default=None, help=f"only these edits, comma separated ({', '.join(EDITS)})")
    group.add_argument("--limit", type=int, default=None, help="at most N items (after the filters above)")
    group.add_argument("--fail-fast", action="store_true", help="stop at the first failing item")
    add_metric_arguments(parser)
