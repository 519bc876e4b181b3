"""The web UI: a Gradio page that edits an uploaded video (``flatten-video web``).

It listens on 127.0.0.1 unless told otherwise (``--host 0.0.0.0``) and makes no public share
link unless ``--share``. One model is loaded, on the first edit, and edits run one at a time
(they fill a GPU); the others wait in Gradio's queue. Results are kept in ``--output-dir``.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import pathlib
import re
import threading

from .cli import (
    DEFAULT_MODEL,
    DTYPES,
    add_lora_arguments,
    default_device,
    error_line,
    load_pipeline,
    resolve_dtype,
)
from .context import ATTENTION_MODES, FLATTEN_VARIANTS
from .editing import EditSettings, edit_video, prepare_edit
from .features import FEATURE_MODES
from .flow import FLOW_METHODS, FlowWeightsUnavailable
from .pipeline import ModelLoadError

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_OUTPUT_DIR = "flatten-video-outputs"


class WebUIUnavailable(RuntimeError):
    """Gradio is not installed."""


# Bad input, missing weights or models: told to the user in one line, no traceback in the log.
USER_ERRORS = (ValueError, ModelLoadError, FlowWeightsUnavailable)


class Editor:
    """Edits videos with one lazily loaded :class:`~flatten_video.FlattenPipeline`.

    The web page is a thin form over this object, so tests (and scripts) can call it directly.

    Args:
        model: hub id or local folder of a Stable Diffusion 1.x/2.x checkpoint.
        device, dtype: where and how the model runs (default: the best device; float16 on CUDA).
        output_dir: where results are written (created on first use).
        cache_dir: where inversions are kept, so that a new prompt on the same clip and settings
            skips flow and inversion (default: ``<output_dir>/inversions``; False: no cache).
        loras, lora_scale: LoRA weights to apply to ``model``, and their weight.
        pipeline: an already loaded pipeline to use instead of loading ``model``.
    """

    def __init__(self, model: str = DEFAULT_MODEL, device: str | None = None, dtype: str | None = None,
                 output_dir: str | os.PathLike = DEFAULT_OUTPUT_DIR, cache_dir: str | os.PathLike | bool | None = None,
                 loras=(), lora_scale: float = 1.0, pipeline=None):
        self.model = model
        self.loras, self.lora_scale = list(loras), lora_scale
        self.device = device or default_device()
        self.dtype = resolve_dtype(dtype, self.device)
        self.output_dir = pathlib.Path(output_dir)
        if cache_dir is False:
            self.cache_dir = None
        else:
            self.cache_dir = pathlib.Path(cache_dir) if cache_dir else self.output_dir / "inversions"
        self._pipeline = pipeline
        self._lock = threading.Lock()

    @property
    def pipeline(self):
        with self._lock:  # two first requests must not load the model twice
            if self._pipeline is None:
                self._pipeline = load_pipeline(self.model, self.device, self.dtype, self.loras, self.lora_scale)
            return self._pipeline

    def output_path(self, video: str | os.PathLike, settings: EditSettings) -> pathlib.Path:
        """``<output_dir>/<video>-<prompt words>-seed<seed>-<time>.mp4``: readable and unique."""
        words = re.sub(r"[^a-z0-9]+", "-", settings.prompt.lower()).strip("-")[:40] or "edit"
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        return self.output_dir / f"{pathlib.Path(video).stem}-{words}-seed{settings.seed}-{stamp}.mp4"

    def __call__(self, video: str | os.PathLike, settings: EditSettings) -> pathlib.Path:
        """Edit ``video`` and return the written mp4. Bad input raises before the model loads."""
        output = self.output_path(video, settings)
        clip = prepare_edit(video, output, settings)
        return edit_video(self.pipeline, video, output, settings, clip=clip, cache_dir=self.cache_dir)


def form_settings(prompt, negative_prompt, frames, stride, width, height, crop, steps, inversion_steps,
                  inject_steps, guidance, seed, flow, attention, variant, feature_mode, side_by_side) -> EditSettings:
    """The form's values as :class:`EditSettings`; 0 in stride, width or height means automatic."""
    automatic = lambda value: int(value) if value else None  # noqa: E731
    return EditSettings(
        prompt=prompt or "",
        negative_prompt=negative_prompt or "",
        frames=int(frames),
        stride=automatic(stride),
        width=automatic(width),
        height=automatic(height),
        crop=bool(crop),
        steps=int(steps),
        inversion_steps=int(inversion_steps),
        inject_steps=int(inject_steps),
        guidance=float(guidance),
        seed=int(seed),
        flow=flow,
        attention=attention,
        variant=variant,
        feature_mode=feature_mode,
        side_by_side=bool(side_by_side),
    )


def run_form(editor: Editor, video, *values) -> str:
    """What the Edit button does: the form's values -> the path of the edited video.

    Every failure reaches the page as one line (``gradio.Error``); the traceback goes to the log.
    """
    gr = _gradio()
    if not video:
        raise gr.Error("upload a source video first")
    try:
        return str(editor(video, form_settings(*values)))
    except Exception as error:
        message = error_line(error)
        if isinstance(error, USER_ERRORS):
            logger.warning("edit refused: %s", message)
        else:  # a bug or a crash: keep the whole story for the log
            logger.exception("edit failed")
        raise gr.Error(message) from error


def build_app(editor: Editor):
    """The Gradio page (a ``gradio.Blocks``) over ``editor``; call ``.launch()`` to serve it."""
    gr = _gradio()
    default = EditSettings(prompt="")
    with gr.Blocks(title="flatten-video", analytics_enabled=False) as app:
        gr.Markdown(
            "# flatten-video\nTraining-free text-to-video editing with optical-flow-guided attention "
            f"(FLATTEN, ICLR 2024). Model: `{editor.model}`{_lora_note(editor)} on `{editor.device}`."
        )
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="Source video", sources=["upload"])
                prompt = gr.Textbox(label="Prompt", placeholder="a tiger, high quality")
                negative_prompt = gr.Textbox(label="Negative prompt", value=default.negative_prompt)
                with gr.Accordion("Frames and size", open=False):
                    frames = gr.Slider(2, 128, value=default.frames, step=1, label="Frames to edit")
                    stride = gr.Number(value=0, precision=0, minimum=0, label="Stride (0: spread over the clip)")
                    width = gr.Number(value=0, precision=0, minimum=0, step=8, label="Width (0: short side 512, aspect kept)")
                    height = gr.Number(value=0, precision=0, minimum=0, step=8, label="Height (0: automatic)")
                    crop = gr.Checkbox(value=default.crop, label="Center-crop instead of stretching")
                with gr.Accordion("Diffusion", open=False):
                    steps = gr.Slider(1, 200, value=default.steps, step=1, label="Sampling steps")
                    inversion_steps = gr.Slider(1, 400, value=default.inversion_steps, step=1, label="Inversion steps")
                    inject_steps = gr.Slider(0, 200, value=default.inject_steps, step=1, label="Steps with source features")
                    guidance = gr.Slider(1, 20, value=default.guidance, step=0.5, label="Guidance scale")
                    seed = gr.Number(value=default.seed, precision=0, label="Seed")
                with gr.Accordion("Method (ablations)", open=False):
                    flow = gr.Dropdown(list(FLOW_METHODS), value=default.flow, label="Optical flow")
                    attention = gr.Dropdown(list(ATTENTION_MODES), value=default.attention, label="Self-attention")
                    variant = gr.Dropdown(list(FLATTEN_VARIANTS), value=default.variant, label="Flow-guided attention variant")
                    feature_mode = gr.Dropdown(list(FEATURE_MODES), value=default.feature_mode, label="Source features")
                    side_by_side = gr.Checkbox(value=default.side_by_side, label="Source and edit side by side")
                run = gr.Button("Edit", variant="primary")
            with gr.Column():
                result = gr.Video(label="Edited video", interactive=False)
        inputs = [video, prompt, negative_prompt, frames, stride, width, height, crop, steps, inversion_steps,
                  inject_steps, guidance, seed, flow, attention, variant, feature_mode, side_by_side]

        def edit(*values, progress=gr.Progress(track_tqdm=True)):  # tqdm bars (flow, inversion, sampling) -> page
            return run_form(editor, *values)

        run.click(edit, inputs=inputs, outputs=result)
    app.queue(default_concurrency_limit=1)  # one edit at a time: each fills the device
    return app


def _lora_note(editor: Editor) -> str:
    if not editor.loras:
        return ""
    return f" with LoRA {', '.join(f'`{lora}`' for lora in editor.loras)} at {editor.lora_scale:g}"


def _gradio():
    # Gradio's usage analytics would call the network; users can still turn them on explicitly.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError as error:
        raise WebUIUnavailable("the web UI needs Gradio: pip install 'flatten-video[web]'") from error
    return gradio


def run_web(args: argparse.Namespace) -> int:
    editor = Editor(args.model, args.device, args.dtype, args.output_dir, False if args.no_cache else args.cache_dir,
                    args.lora, args.lora_scale)
    app = build_app(editor)
    print(f"flatten-video web UI on http://{args.host}:{args.port} (results in {editor.output_dir.absolute()})")
    app.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        allowed_paths=[str(editor.output_dir.absolute())],
        inbrowser=args.open,
    )
    return 0


def register(commands) -> None:
    """Add the ``web`` subcommand to the CLI's subparsers."""
    parser = commands.add_parser("web", help="serve the web UI (Gradio)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"Stable Diffusion 1.x/2.x hub id or local folder (default: {DEFAULT_MODEL})")
    add_lora_arguments(parser)
    parser.add_argument("--device", default=None, help="cuda, cuda:1, mps or cpu (default: the best available)")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="model dtype (default: float16 on CUDA, float32 elsewhere)")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default: {DEFAULT_HOST}, this machine only; 0.0.0.0 for the network)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    parser.add_argument("--share", action="store_true", help="also make a public gradio.live link (off by default)")
    parser.add_argument("--open", action="store_true", help="open the page in a browser")
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help=f"where edited videos are kept (default: ./{DEFAULT_OUTPUT_DIR})")
    parser.add_argument("--cache-dir", default=None, help="where inversions are kept, so a new prompt on the same clip skips flow and inversion (default: OUTPUT_DIR/inversions)")
    parser.add_argument("--no-cache", action="store_true", help="keep no inversions")
    parser.set_defaults(handler=run_web)
