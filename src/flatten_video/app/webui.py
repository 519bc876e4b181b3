"""The web UI: a Gradio page that edits an uploaded video (``flatten-video web``).

It listens on 127.0.0.1 unless told otherwise (``--host 0.0.0.0``) and makes no public share
link unless ``--share``. One model is loaded, on the first edit, and edits run one at a time
(they fill a GPU); the others wait in Gradio's queue. Results are kept in ``--output-dir``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import logging
import os
import pathlib
import re
import threading

from .editing import control_images, edit_video, prepare_source
from .runtime import (
    DEFAULT_MODEL,
    USER_ERRORS,
    add_controlnets,
    check_controlnets,
    default_device,
    error_line,
    load_pipeline,
    pipeline_class,
    resolve_dtype,
)
from .settings import EditSettings, RuntimeSettings, add_arguments, options_of

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_OUTPUT_DIR = "flatten-video-outputs"


class WebUIUnavailable(RuntimeError):
    """Gradio is not installed."""


class Editor:
    """Edits videos with one lazily loaded :class:`~flatten_video.FlattenPipeline`.

    The web page is a thin form over this object, so tests (and scripts) can call it directly.

    Args:
        model: hub id or local folder of a Stable Diffusion 1.x/2.x or XL checkpoint.
        device, dtype: where and how the model runs (default: the best device; float16 on CUDA).
        output_dir: where results are written (created on first use).
        cache_dir: where inversions are kept, so that a new prompt on the same clip and settings
            skips flow and inversion (default: ``<output_dir>/inversions``; False: no cache).
        loras, lora_scale: LoRA weights to apply to ``model``, and their weight.
        model_config: for a single-file ``model``, its base model's configs (folder or hub id).
        pipeline: an already loaded pipeline to use instead of loading ``model``.
    """

    def __init__(self, model: str = DEFAULT_MODEL, device: str | None = None, dtype: str | None = None,
                 output_dir: str | os.PathLike = DEFAULT_OUTPUT_DIR, cache_dir: str | os.PathLike | bool | None = None,
                 loras=(), lora_scale: float = 1.0, pipeline=None, model_config: str | None = None):
        self.model, self.model_config = model, model_config
        self.loras, self.lora_scale = list(loras), lora_scale
        self.device = device or default_device()
        self.dtype = resolve_dtype(dtype, self.device)
        self.output_dir = pathlib.Path(output_dir)
        if cache_dir is False:
            self.cache_dir = None
        else:
            self.cache_dir = pathlib.Path(cache_dir) if cache_dir else self.output_dir / "inversions"
        self._pipeline = pipeline
        self._controlled: tuple = (None, None)  # (ControlNets asked, the pipeline with them)
        self._lock = threading.Lock()

    @property
    def pipeline(self):
        with self._lock:  # two first requests must not load the model twice
            if self._pipeline is None:
                self._pipeline = load_pipeline(self.model, self.device, self.dtype, self.loras, self.lora_scale,
                                               model_config=self.model_config)
            return self._pipeline

    def pipeline_for(self, controls: list[tuple[str, str | None]]):
        """The loaded pipeline, with these ControlNets when asked (kept while the same ones are asked)."""
        if not controls:
            return self.pipeline
        base = self.pipeline
        with self._lock:
            if self._controlled[0] != controls:
                self._controlled = (controls, add_controlnets(base, controls, self.dtype).to(self.device))
            return self._controlled[1]

    def output_path(self, video: str | os.PathLike, settings: EditSettings) -> pathlib.Path:
        """``<output_dir>/<video>-<prompt words>-seed<seed>-<time>.mp4``: readable and unique."""
        words = re.sub(r"[^a-z0-9]+", "-", settings.prompt.lower()).strip("-")[:40] or "edit"
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        return self.output_dir / f"{pathlib.Path(video).stem}-{words}-seed{settings.seed}-{stamp}.mp4"

    def __call__(self, video: str | os.PathLike, settings: EditSettings) -> pathlib.Path:
        """Edit ``video`` and return the written mp4. Bad input raises before the model loads."""
        output = self.output_path(video, settings)
        clip = prepare_source(video, settings, output, short_side=pipeline_class(self.model).default_short_side)
        controls = control_images(clip, settings)
        check_controlnets(self.model, settings.controls)
        return edit_video(self.pipeline_for(settings.controls), video, output, settings, clip=clip, cache_dir=self.cache_dir,
                          controls=controls)


#: The settings on the page, in the order of the form's inputs after the video.
FORM_FIELDS = tuple(f.name for f, meta in options_of(EditSettings) if meta.widget is not None)


def form_settings(*values) -> EditSettings:
    """The form's values (in :data:`FORM_FIELDS` order) as :class:`EditSettings`.

    Gradio gives numbers as floats and empty boxes as None; 0 means automatic where the widget
    says so.
    """
    settings = {}
    for (f, meta), value in zip(_form_options(), values, strict=True):
        if meta.widget.zero_is_auto and not value:
            value = None
        elif meta.widget.kind == "text":
            value = value or ""
        elif meta.widget.kind == "checkbox":
            value = bool(value)
        elif meta.widget.kind == "checkboxes":
            value = list(value or [])
        elif value is not None and meta.widget.kind in ("slider", "number"):
            value = float(value) if isinstance(f.default, float) else int(value)
        settings[f.name] = value
    return EditSettings(**settings)


def _form_options():
    return [(f, meta) for f, meta in options_of(EditSettings) if meta.widget is not None]


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
                widgets = _build_widgets(gr, default)
                run = gr.Button("Edit", variant="primary")
            with gr.Column():
                result = gr.Video(label="Edited video", interactive=False)
        inputs = [video, *(widgets[name] for name in FORM_FIELDS)]

        def edit(*values, progress=gr.Progress(track_tqdm=True)):  # tqdm bars (flow, inversion, sampling) -> page
            return run_form(editor, *values)

        run.click(edit, inputs=inputs, outputs=result)
    app.queue(default_concurrency_limit=1)  # one edit at a time: each fills the device
    return app


def _build_widgets(gr, default: EditSettings) -> dict:
    """One widget per :data:`FORM_FIELDS` entry, from its :class:`~flatten_video.app.settings.Widget`;
    each section is a folded accordion, in the order the fields declare them."""
    widgets = {}
    for section, group in itertools.groupby(_form_options(), key=lambda option: option[1].widget.section):
        with gr.Accordion(section, open=False) if section else contextlib.nullcontext():
            for f, meta in group:
                widgets[f.name] = _widget(gr, meta, getattr(default, f.name))
    return widgets


def _widget(gr, meta, value):
    spec = meta.widget
    if spec.zero_is_auto and value is None:
        value = 0
    if spec.kind == "text":
        return gr.Textbox(label=spec.label, value=value, placeholder=spec.placeholder)
    if spec.kind == "slider":
        return gr.Slider(spec.low, spec.high, value=value, step=spec.step, label=spec.label)
    if spec.kind == "number":
        return gr.Number(value=value, precision=0, minimum=spec.low, step=spec.step or 1, label=spec.label)
    if spec.kind == "checkboxes":
        return gr.CheckboxGroup(list(spec.options), value=list(value), label=spec.label)
    if spec.kind == "dropdown":
        return gr.Dropdown(list(meta.choices), value=value, label=spec.label)
    return gr.Checkbox(value=value, label=spec.label)


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
                    args.lora, args.lora_scale, model_config=args.model_config)
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


def add_web_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``web`` command's options: the runtime ones of the settings schema, then the server's."""
    add_arguments(parser, RuntimeSettings)
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default: {DEFAULT_HOST}, this machine only; 0.0.0.0 for the network)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    parser.add_argument("--share", action="store_true", help="also make a public gradio.live link (off by default)")
    parser.add_argument("--open", action="store_true", help="open the page in a browser")
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help=f"where edited videos are kept (default: ./{DEFAULT_OUTPUT_DIR})")
    parser.add_argument("--cache-dir", default=None, help="where inversions are kept, so a new prompt on the same clip skips flow and inversion (default: OUTPUT_DIR/inversions)")
    parser.add_argument("--no-cache", action="store_true", help="keep no inversions")
