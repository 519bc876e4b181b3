"""The ``flatten-video`` command line: ``edit``, ``web``, ``eval`` and ``bench``.

Every subcommand reports user errors as one line on stderr and a non-zero exit status;
``--debug`` shows the traceback instead. This module is the top floor: it only wires options
(mostly generated from :mod:`flatten_video.app.settings`) to the app and eval layers.

Only the subcommand being run has its options built, and torch, diffusers and Gradio are imported
inside the handlers: ``flatten-video --help`` and ``flatten-video edit --help`` answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import warnings

from .app.errors import error_line
from .app.settings import EditSettings, RuntimeSettings, add_arguments, options_of


def default_output(video: str, prompts: int = 1) -> str:
    """``<video name>-flatten.mp4`` in the working folder; ``<video name>-{prompt}.mp4`` for several prompts."""
    stem = pathlib.Path(video.rstrip("/")).stem
    return f"{stem}-flatten.mp4" if prompts == 1 else f"{stem}-{{prompt}}.mp4"


def read_prompts(args: argparse.Namespace) -> list[str]:
    """The prompts of ``-p`` (in order), then those of ``--prompts-file`` (one a line; blank lines
    and lines starting with '#' skipped)."""
    prompts = list(args.prompts or [])
    if args.prompts_file:
        path = pathlib.Path(args.prompts_file)
        try:
            text = path.read_bytes().decode("utf-8-sig")  # Windows editors save a byte-order mark
        except OSError as error:
            raise ValueError(f"cannot read the prompts file {path}: {error.strerror or error}") from None
        except UnicodeDecodeError:
            raise ValueError(f"the prompts file {path} is not UTF-8 text") from None
        lines = [line.strip() for line in text.splitlines()]
        from_file = [line for line in lines if line and not line.startswith("#")]
        if not from_file:
            raise ValueError(f"the prompts file {path} holds no prompt (one a line)")
        prompts += from_file
    if not prompts:
        raise ValueError("give a prompt with -p/--prompt (repeat it for several) or --prompts-file")
    return prompts


def run_edit(args: argparse.Namespace) -> int:
    from .app.editing import control_images, edit_prompts, prepare_source, prompt_outputs
    from .app.runtime import check_runtime, load_pipeline, pipeline_class, resolve_dtype

    prompts = read_prompts(args)
    runtime = RuntimeSettings.from_namespace(args)
    # Everything that can fail fast does, before the model loads: the model's kind (which sets the
    # defaults), settings, outputs, source, maps, the machine.
    cls = pipeline_class(runtime.model)
    settings = dataclasses.replace(EditSettings.from_namespace(args, cls.family), prompt=prompts[0])
    for prompt in prompts:
        dataclasses.replace(settings, prompt=prompt).check()
    outputs = prompt_outputs(args.output or default_output(args.video, len(prompts)), prompts)
    clip = prepare_source(args.video, settings, outputs, pipeline=cls, cache_dir=args.cache_dir)
    controls = control_images(clip, settings)
    device = check_runtime(runtime, settings)
    main_process = True
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by accelerate launch / torchrun
        from accelerate import PartialState

        # Joins the process group: the pipeline then shares every step's windows among the processes.
        state = PartialState(cpu=device == "cpu")
        device, main_process = str(state.device), state.is_main_process
    pipe = load_pipeline(runtime.model, device, resolve_dtype(runtime.dtype, device), runtime.lora, runtime.lora_scale,
                         settings.controls, runtime.model_config, runtime.attention_backend, runtime.compile)
    if not main_process:
        pipe.set_progress_bar_config(disable=True)

    def announce(index: int, prompt: str) -> None:
        if len(prompts) > 1 and main_process:
            print(f"prompt {index + 1}/{len(prompts)}: {prompt}", file=sys.stderr)

    failed = []
    for outcome in edit_prompts(pipe, args.video, outputs, settings, prompts, clip=clip, cache_dir=args.cache_dir,
                                write=main_process, controls=controls, on_prompt=announce):
        if outcome.error is not None:
            if args.debug or len(prompts) == 1:
                raise outcome.error
            failed.append(outcome)
            print(f"flatten-video: error: prompt {outcome.index + 1} ({outcome.prompt!r}): {error_line(outcome.error)}",
                  file=sys.stderr)
        elif main_process:
            print(f"wrote {outcome.output}")
    if failed:
        names = ", ".join(f"{o.index + 1} ({o.prompt!r})" for o in failed)
        print(f"flatten-video: error: {len(failed)} of {len(prompts)} prompts failed: {names}; the others were written",
              file=sys.stderr)
        return 1
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
        if action.dest in ("help", "launcher", "num_processes") or not hasattr(args, action.dest):
            continue  # not given (an option whose default is the model family's)
        value = getattr(args, action.dest)
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
    from .app.runtime import pipeline_class

    settings = EditSettings.from_namespace(args, pipeline_class(args.model).family)
    if args.command == "edit":
        for prompt in read_prompts(args):
            dataclasses.replace(settings, prompt=prompt).check()
    else:
        settings.check(require_prompt=False)
    RuntimeSettings.from_namespace(args).check()
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if args.num_processes:
        command += ["--num_processes", str(args.num_processes)]
    command += ["-m", "flatten_video", *command_argv(args)]
    print(f"running: {shlex.join(command)}", file=sys.stderr)
    return subprocess.run(command).returncode


def add_edit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", help="source video file (mp4, mov, webm, gif...) or a folder of frames")
    prompt_help = next(meta.help for f, meta in options_of(EditSettings) if f.name == "prompt")
    parser.add_argument("--prompt", "-p", dest="prompts", action="append", metavar="PROMPT",
                        help=f"{prompt_help}; repeat for several edits of one inversion")
    parser.add_argument("--prompts-file", default=None, metavar="FILE",
                        help="more prompts, one a line (blank lines and lines starting with # are skipped)")
    add_arguments(parser, EditSettings, exclude=("prompt",), by_family=True)
    add_arguments(parser, RuntimeSettings)
    parser.add_argument("--output", "-o", default=None, help="output .mp4 or .gif (default: <video name>-flatten.mp4); "
                        "with several prompts it must hold {prompt} (the prompt in file-name form) or {index} (1, 2, ...); "
                        "default then: <video name>-{prompt}.mp4")
    parser.add_argument("--cache-dir", default=None, help="keep inversions here: editing the same clip again with the same settings, any prompt, skips flow and inversion, and a run that stopped while sampling resumes (default: no cache)")
    add_launcher_arguments(parser, "the windows of every step of a long clip are shared among the processes")


# The options come from torch-free modules, so every --help answers at once; a handler imports the
# libraries only when its command runs.


def run_web(args: argparse.Namespace) -> int:
    from .app.webui import run_web

    return run_web(args)


def run_eval(args: argparse.Namespace) -> int:
    from .eval.runner import run_eval

    return run_eval(args)


def run_bench(args: argparse.Namespace) -> int:
    from .eval.runner import run_bench

    return run_bench(args)


def add_web_command(parser: argparse.ArgumentParser) -> None:
    from .app.web_options import add_web_arguments

    add_web_arguments(parser)
    parser.set_defaults(handler=run_web)


def add_eval_command(parser: argparse.ArgumentParser) -> None:
    from .eval.options import add_eval_arguments

    add_eval_arguments(parser)
    parser.set_defaults(handler=run_eval)


def add_bench_command(parser: argparse.ArgumentParser) -> None:
    from .eval.options import add_bench_arguments

    add_bench_arguments(parser)
    add_launcher_arguments(parser, "videos are shared among the processes")
    # command_parser: command_argv rebuilds the command line from it for accelerate's processes.
    parser.set_defaults(handler=run_bench, command_parser=parser)


def add_edit_command(parser: argparse.ArgumentParser) -> None:
    add_edit_arguments(parser)
    parser.set_defaults(handler=run_edit, command_parser=parser)


#: Subcommand -> (its one-line help, the function that adds its options and handler).
COMMANDS = {
    "edit": ("edit a video from a text prompt (or several)", add_edit_command),
    "web": ("serve the web UI (Gradio)", add_web_command),
    "eval": ("score an edited video against its source", add_eval_command),
    "bench": ("edit and score the LOVEU-TGVE-2023 benchmark", add_bench_command),
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the usage of ``edit`` alone is 20 lines, and would bury the reason."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(commands=None) -> argparse.ArgumentParser:
    """The parser, with the options of ``commands`` built (default: all; the others are listed
    with their help only, so building them imports nothing heavy)."""
    parser = _Parser(prog="flatten-video", description="Training-free text-to-video editing with FLATTEN (ICLR 2024).")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and the libraries' own log")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add) in COMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        if commands is None or name in commands:
            add(subparser)
    return parser


class _Stderr(logging.StreamHandler):
    """Writes to the current ``sys.stderr`` (which tests and notebooks replace), not the one at setup."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class _Lines(logging.Formatter):
    """Progress notes as they are; warnings and errors prefixed with their level."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}"


def configure_logging(debug: bool) -> None:
    """flatten-video's notes (a reused inversion, a feature-mode fallback) as plain stderr lines,
    once each; the libraries' own log only with ``--debug``."""
    if not debug:
        # Libraries' deprecation notices (diffusers' torch_dtype, huggingface_hub's local_dir_use_symlinks)
        # say nothing to users and would turn a one-line error into several lines.
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks", category=UserWarning)
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    package = logging.getLogger("flatten_video")
    package.setLevel(logging.DEBUG if debug else logging.INFO)
    package.propagate = False  # a root handler would print every line twice
    if not any(getattr(handler, "_flatten_video", False) for handler in package.handlers):
        handler = _Stderr()
        handler._flatten_video = True
        handler.setFormatter(_Lines())
        package.addHandler(handler)


#: The libraries every command's work imports, in the order they import one another.
LIBRARIES = ("torch", "torchvision", "transformers", "diffusers")


class LibraryError(RuntimeError):
    """A library the work needs cannot be imported: one line naming it and the fix."""


def check_libraries() -> None:
    """Import the libraries the work needs, turning a broken install (a torchvision built for
    another torch, a missing wheel) into one line instead of a long traceback from deep inside."""
    import importlib

    for name in LIBRARIES:
        try:
            importlib.import_module(name)
        except Exception as error:  # ImportError, OSError (a missing .so), RuntimeError (operator not found)
            pair = ""
            if name == "torchvision" and "torch" in sys.modules:
                pair = f"; it must be the build made for torch {sys.modules['torch'].__version__}"
            raise LibraryError(f"{name} cannot be imported ({error_line(error)}){pair}: reinstall it, e.g. "
                               f"pip install --force-reinstall {name}") from error


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, ``docker stop``, systemd, a CI cancelling a job), raised where the
    program is, so it unwinds as Ctrl-C does: temporary files removed, nothing partial written."""


def _terminate(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    parser = build_parser([command] if command in COMMANDS else [])
    args = parser.parse_args(argv)
    configure_logging(args.debug)
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (an embedding program): it handles its own signals
        previous = None
    try:
        check_libraries()
        if getattr(args, "launcher", "none") == "accelerate":
            return relaunch_with_accelerate(args)
        return args.handler(args)
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # one line for users, the traceback with --debug
        if args.debug:
            raise
        print(f"flatten-video: error: {error_line(error)}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
