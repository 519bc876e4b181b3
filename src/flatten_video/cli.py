"""The ``flatten-video`` command line: ``edit``, ``web``, ``eval`` and ``bench``.

Every subcommand reports user errors as one line on stderr and a non-zero exit status;
``--debug`` shows the traceback instead. This module is the top floor: it only wires options
(mostly generated from :mod:`flatten_video.app.settings`) to the app and eval layers.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys
import warnings

from .app.editing import edit_video, prepare_source
from .app.runtime import default_device, error_line, load_pipeline, resolve_dtype
from .app.settings import EditSettings, RuntimeSettings, add_arguments
from .app.webui import add_web_arguments, run_web
from .eval.runner import add_bench_arguments, add_eval_arguments, run_bench, run_eval


def default_output(video: str) -> pathlib.Path:
    return pathlib.Path(f"{pathlib.Path(video.rstrip('/')).stem}-flatten.mp4")


def run_edit(args: argparse.Namespace) -> int:
    settings = EditSettings.from_namespace(args)
    runtime = RuntimeSettings.from_namespace(args)
    output = pathlib.Path(args.output) if args.output else default_output(args.video)
    clip = prepare_source(args.video, settings, output)  # fails fast, before the model loads
    device = runtime.device or default_device()
    pipe = load_pipeline(runtime.model, device, resolve_dtype(runtime.dtype, device), runtime.lora, runtime.lora_scale)
    written = edit_video(pipe, args.video, output, settings, clip=clip, cache_dir=args.cache_dir)
    print(f"wrote {written}")
    return 0


def add_edit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", help="source video file (mp4, mov, webm, gif...) or a folder of frames")
    add_arguments(parser, EditSettings, required=("prompt",))
    add_arguments(parser, RuntimeSettings)
    parser.add_argument("--output", "-o", default=None, help="output .mp4 or .gif (default: <video name>-flatten.mp4)")
    parser.add_argument("--cache-dir", default=None, help="keep inversions here: editing the same clip again with the same settings, any prompt, skips flow and inversion, and a run that stopped while sampling resumes (default: no cache)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flatten-video", description="Training-free text-to-video editing with FLATTEN (ICLR 2024)."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)
    edit = commands.add_parser("edit", help="edit a video from a text prompt")
    add_edit_arguments(edit)
    edit.set_defaults(handler=run_edit)
    web = commands.add_parser("web", help="serve the web UI (Gradio)")
    add_web_arguments(web)
    web.set_defaults(handler=run_web)
    evaluate = commands.add_parser("eval", help="score an edited video against its source")
    add_eval_arguments(evaluate)
    evaluate.set_defaults(handler=run_eval)
    bench = commands.add_parser("bench", help="edit and score the LOVEU-TGVE-2023 benchmark")
    add_bench_arguments(bench)
    # bench_parser: the runner rebuilds the command line from it for accelerate's processes.
    bench.set_defaults(handler=run_bench, bench_parser=bench)
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
