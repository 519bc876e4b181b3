"""The ``flatten-video`` command line: ``edit``, ``web``, ``eval`` and ``bench``.

Every subcommand reports user errors as one line on stderr and a non-zero exit status;
``--debug`` shows the traceback instead. This module is the top floor: it only wires options
(mostly generated from :mod:`flatten_video.app.settings`) to the app and eval layers.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import shlex
import subprocess
import sys
import warnings

from .app.editing import control_images, edit_video, prepare_source
from .app.runtime import check_controlnets, default_device, error_line, load_pipeline, pipeline_class, resolve_dtype
from .app.settings import EditSettings, RuntimeSettings, add_arguments
from .app.webui import add_web_arguments, run_web
from .eval.runner import add_bench_arguments, add_eval_arguments, run_bench, run_eval


def default_output(video: str) -> pathlib.Path:
    return pathlib.Path(f"{pathlib.Path(video.rstrip('/')).stem}-flatten.mp4")


def run_edit(args: argparse.Namespace) -> int:
    settings = EditSettings.from_namespace(args)
    runtime = RuntimeSettings.from_namespace(args)
    output = pathlib.Path(args.output) if args.output else default_output(args.video)
    short_side = pipeline_class(runtime.model).default_short_side
    # Everything that can fail fast does, before the model loads: settings, output, source, maps.
    clip = prepare_source(args.video, settings, output, short_side=short_side)
    controls = control_images(clip, settings)
    check_controlnets(runtime.model, settings.controls)
    device = runtime.device or default_device()
    main_process = True
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by accelerate launch / torchrun
        from accelerate import PartialState

        # Joins the process group: the pipeline then shares every step's windows among the processes.
        state = PartialState(cpu=device == "cpu")
        device, main_process = str(state.device), state.is_main_process
    pipe = load_pipeline(runtime.model, device, resolve_dtype(runtime.dtype, device), runtime.lora, runtime.lora_scale,
                         settings.controls, runtime.model_config)
    if not main_process:
        pipe.set_progress_bar_config(disable=True)
    written = edit_video(pipe, args.video, output, settings, clip=clip, cache_dir=args.cache_dir, write=main_process,
                         controls=controls)
    if main_process:
        print(f"wrote {written}")
    return 0


def add_launcher_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    group = parser.add_argument_group("several processes")
    group.add_argument("--launcher", choices=("none", "accelerate"), default="none", help=f"accelerate: run on several GPUs via `accelerate launch` ({what})")
    group.add_argument("--num-processes", type=int, default=None, help="processes for --launcher accelerate (default: accelerate's config, else one per GPU)")


def command_argv(args: argparse.Namespace) -> list[str]:
    """The command line (after ``flatten-video``) that gives ``args`` again, without ``--launcher``:
    what every process started by ``accelerate launch -m flatten_video`` parses."""
    argv = ["--debug"] if getattr(args, "debug", False) else []
    argv.append(args.command)
    options = []
    for action in args.command_parser._actions:
        value = getattr(args, action.dest, None)
        if action.dest in ("help", "launcher", "num_processes"):
            continue
        if not action.option_strings:
            argv.append(str(value))
        elif value != action.default:
            flag = max(action.option_strings, key=len)  # the long form
            # --flag=value keeps values such as "" or "-blurry" from being read as options.
            if action.nargs == 0:
                options.append(flag)
            else:  # an appending option (--lora) gives a list: one flag per value
                options += [f"{flag}={item}" for item in (value if isinstance(value, list) else [value])]
    return argv + options


def relaunch_with_accelerate(args: argparse.Namespace) -> int:
    """Run this command again as ``accelerate launch [--num_processes N] -m flatten_video ...``."""
    # Settings errors are found once, here, rather than once per process.
    EditSettings.from_namespace(args).check(require_prompt=args.command == "edit")
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if args.num_processes:
        command += ["--num_processes", str(args.num_processes)]
    command += ["-m", "flatten_video", *command_argv(args)]
    print(f"running: {shlex.join(command)}", file=sys.stderr)
    return subprocess.run(command).returncode


def add_edit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", help="source video file (mp4, mov, webm, gif...) or a folder of frames")
    add_arguments(parser, EditSettings, required=("prompt",))
    add_arguments(parser, RuntimeSettings)
    parser.add_argument("--output", "-o", default=None, help="output .mp4 or .gif (default: <video name>-flatten.mp4)")
    parser.add_argument("--cache-dir", default=None, help="keep inversions here: editing the same clip again with the same settings, any prompt, skips flow and inversion, and a run that stopped while sampling resumes (default: no cache)")
    add_launcher_arguments(parser, "the windows of every step of a long clip are shared among the processes")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flatten-video", description="Training-free text-to-video editing with FLATTEN (ICLR 2024)."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)
    edit = commands.add_parser("edit", help="edit a video from a text prompt")
    add_edit_arguments(edit)
    edit.set_defaults(handler=run_edit, command_parser=edit)
    web = commands.add_parser("web", help="serve the web UI (Gradio)")
    add_web_arguments(web)
    web.set_defaults(handler=run_web)
    evaluate = commands.add_parser("eval", help="score an edited video against its source")
    add_eval_arguments(evaluate)
    evaluate.set_defaults(handler=run_eval)
    bench = commands.add_parser("bench", help="edit and score the LOVEU-TGVE-2023 benchmark")
    add_bench_arguments(bench)
    add_launcher_arguments(bench, "videos are shared among the processes")
    # command_parser: command_argv rebuilds the command line from it for accelerate's processes.
    bench.set_defaults(handler=run_bench, command_parser=bench)
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
        if getattr(args, "launcher", "none") == "accelerate":
            return relaunch_with_accelerate(args)
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
