"""The web UI: a Gradio page that edits an uploaded video (``flatten-video web``).

It listens on 127.0.0.1 unless told otherwise (``--host 0.0.0.0``) and makes no public share
link unless ``--share``. One model is loaded, on the first edit, and edits run one at a time
(they fill a GPU); the others wait in Gradio's queue, which shows them their place. Results are
kept in ``--output-dir``.
"""

# No ``from __future__ import annotations`` here: Gradio reads the handlers' annotations
# (gr.Request, gr.SelectData) as objects, and ``gr`` is only a local name of build_app.

import argparse
import contextlib
import dataclasses
import datetime
import html
import importlib.resources
import logging
import os
import pathlib
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from ..families import FAMILIES
from ..validation import check_num_frames, check_positive_number
from ..video import write_video
from .editing import control_images, edit_prompts, prepare_source, prompt_outputs
from .runtime import (
    USER_ERRORS,
    add_controlnets,
    check_controlnets,
    check_runtime,
    check_schedule,
    default_device,
    load_pipeline,
    pipeline_class,
    resolve_dtype,
)
from .errors import error_line
from .settings import DEFAULT_MODEL, EditSettings, RuntimeSettings, flag, options_of
from .web_options import DEFAULT_OUTPUT_DIR

logger = logging.getLogger(__name__)


#: The clip bundled with the package (a pan over a CC0 photo of a cat), one click away on the page.
SAMPLE_VIDEO = pathlib.Path(str(importlib.resources.files("flatten_video") / "assets" / "sample.mp4"))
#: Prompts offered with it; the last gives two prompts, one per line, edited from one inversion.
EXAMPLE_PROMPTS = (
    "a tiger, high quality",
    "a white fox in the snow, watercolor painting",
    "a cat made of colorful origami paper\na bronze statue of a cat",
)


class WebUIUnavailable(RuntimeError):
    """Gradio is not installed."""


class EditStopped(Exception):
    """The visitor pressed Stop; nothing of the prompt that was running is kept."""


def check_stop(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise EditStopped("stopped")


@dataclass
class Result:
    """One prompt's edit as the page offers it.

    Attributes:
        prompt, seed: what made it (the gallery's caption).
        video: the edited mp4.
        side_by_side: source | edit, an mp4 (the video itself when it is already side by side).
        gif: the edit (as written) as a GIF.
        error: why the prompt failed; then only ``video`` (the path it would have had) is set.
    """

    prompt: str
    seed: int
    video: pathlib.Path
    side_by_side: pathlib.Path | None = None
    gif: pathlib.Path | None = None
    error: BaseException | None = None

    @property
    def caption(self) -> str:
        return f"{self.prompt} (seed {self.seed})"


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
        max_frames: the most frames one edit may ask for (None: no limit).
        attention_backend, compile: the dense attention's kernel and regional compilation (as `edit`'s).
    """

    def __init__(self, model: str = DEFAULT_MODEL, device: str | None = None, dtype: str | None = None,
                 output_dir: str | os.PathLike = DEFAULT_OUTPUT_DIR, cache_dir: str | os.PathLike | bool | None = None,
                 loras=(), lora_scale: float = 1.0, pipeline=None, model_config: str | None = None,
                 max_frames: int | None = None, attention_backend: str | None = None, compile: bool = False):
        self.model, self.model_config = model, model_config
        self.attention_backend, self.compile = attention_backend, compile
        self.loras, self.lora_scale = list(loras), lora_scale
        self.device = device or default_device()
        self.dtype = resolve_dtype(dtype, self.device)
        self.output_dir = pathlib.Path(output_dir)
        if cache_dir is False:
            self.cache_dir = None
        else:
            self.cache_dir = pathlib.Path(cache_dir) if cache_dir else self.output_dir / "inversions"
        self.max_frames = max_frames
        self._pipeline = pipeline
        self._controlled: tuple = (None, None)  # (ControlNets asked, the pipeline with them)
        self._lock = threading.Lock()

    @property
    def pipeline_class(self):
        """The class of the pipeline that edits, known before the model loads (its family sets the
        form's defaults and options)."""
        return type(self._pipeline) if self._pipeline is not None else pipeline_class(self.model)

    @property
    def pipeline(self):
        with self._lock:  # two first requests must not load the model twice
            if self._pipeline is None:
                self._pipeline = load_pipeline(self.model, self.device, self.dtype, self.loras, self.lora_scale,
                                               model_config=self.model_config, attention_backend=self.attention_backend,
                                               compile=self.compile)
            return self._pipeline

    @property
    def loaded(self) -> bool:
        return self._pipeline is not None

    def pipeline_for(self, controls: list[tuple[str, str | None]]):
        """The loaded pipeline, with these ControlNets when asked (kept while the same ones are asked)."""
        if not controls:
            return self.pipeline
        base = self.pipeline
        with self._lock:
            if self._controlled[0] != controls:
                self._controlled = (controls, add_controlnets(base, controls, self.dtype).to(self.device))
            return self._controlled[1]

    def output_template(self, video: str | os.PathLike, settings: EditSettings) -> str:
        """``<output_dir>/<video>-{prompt}-seed<seed>-<time>.mp4`` (:func:`prompt_outputs` fills
        in each prompt's words): readable and unique."""
        stem = pathlib.Path(video).stem.replace("{", "{{").replace("}", "}}")  # a literal, not a placeholder
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        return str(self.output_dir / f"{stem}-{{prompt}}-seed{settings.seed}-{stamp}.mp4")

    def __call__(self, video: str | os.PathLike, settings: EditSettings) -> pathlib.Path:
        """Edit ``video`` and return the written mp4. Bad input raises before the model loads."""
        (result,) = self.edit(video, settings, downloads=False)
        if result.error is not None:
            raise result.error
        return result.video

    def edit(
        self,
        video: str | os.PathLike,
        settings: EditSettings,
        prompts: Sequence[str] | None = None,
        *,
        stop: threading.Event | None = None,
        on_prompt: Callable[[int, str], None] | None = None,
        on_phase: Callable[[str], None] | None = None,
        downloads: bool = True,
    ) -> Iterator[Result]:
        """Edit ``video`` once per prompt (default: ``settings.prompt``) from one inversion,
        yielding each prompt's :class:`Result` as soon as it is written.

        Bad input raises before the model loads. Setting ``stop`` ends the edit at the next
        sampling step, or between phases, with :class:`EditStopped`; the prompt that was running
        leaves no file (outputs are written atomically) and the inversion is cached only when it
        finished. A prompt that fails otherwise is yielded with its error and the next one runs.

        Args:
            on_prompt: called with (index, prompt) before each prompt's sampling.
            on_phase: called with the name of a phase the progress bars do not show (the model's
                first load), only when it happens: not for input refused before it.
            downloads: also write each result's side-by-side mp4 and GIF.
        """
        prompts = list(prompts or [settings.prompt])
        settings = dataclasses.replace(settings, prompt=prompts[0])
        outputs = prompt_outputs(self.output_template(video, settings), prompts)
        clip, controls = self.prepare(video, settings, outputs[0])
        check_stop(stop)
        if on_phase is not None and not self.loaded:
            on_phase("Loading the model")
        pipe = self.pipeline_for(settings.controls)
        check_stop(stop)

        def prompt_starts(index: int, prompt: str) -> None:
            check_stop(stop)  # between the inversion and a prompt, or two prompts
            if on_prompt is not None:
                on_prompt(index, prompt)

        def step_ends(pipe, step, timestep, tensors):
            check_stop(stop)  # raised inside the denoising loop: the prompt ends, nothing is written

        edits = edit_prompts(pipe, video, outputs, settings, prompts, clip=clip, cache_dir=self.cache_dir,
                             controls=controls, on_prompt=prompt_starts, callback_on_step_end=step_ends)
        with contextlib.closing(edits):
            for outcome in edits:
                if isinstance(outcome.error, EditStopped):
                    raise outcome.error
                result = Result(outcome.prompt, settings.seed, outcome.output, error=outcome.error)
                if outcome.ok and downloads:
                    result.side_by_side, result.gif = self.write_downloads(outcome, clip, settings)
                yield result

    def prepare(self, video: str | os.PathLike, settings: EditSettings, output: pathlib.Path):
        """Everything that can fail before the model loads: the server's frame limit, the
        settings, the output, the source clip, the condition maps and the ControlNets' names.

        Returns:
            The source clip at the working size, and its condition maps.
        """
        if self.max_frames is not None and settings.frames > self.max_frames:
            raise ValueError(f"{flag('frames')} is {settings.frames}; this server edits at most {self.max_frames} frames")
        clip = prepare_source(video, settings, output, pipeline=self.pipeline_class)
        controls = control_images(clip, settings)
        check_controlnets(self.model, settings.controls)
        check_schedule(self.model, settings)
        return clip, controls

    def write_downloads(self, outcome, clip, settings: EditSettings) -> tuple[pathlib.Path, pathlib.Path]:
        """The edit's side-by-side mp4 (source | edit) and GIF, beside its output, from its frames."""
        fps = settings.fps or clip.fps
        beside = clip.frames if settings.side_by_side else None  # the GIF shows what the output shows
        gif = write_video(outcome.frames, outcome.output.with_suffix(".gif"), fps=fps, side_by_side=beside)
        if settings.side_by_side:  # the edit already shows the source on its left
            return outcome.output, gif
        side_by_side = write_video(outcome.frames, outcome.output.with_name(f"{outcome.output.stem}-side-by-side.mp4"),
                                   fps=fps, side_by_side=clip.frames)
        return side_by_side, gif


# --------------------------------------------------------------------------- the form


def _form_options():
    return [(f, meta) for f, meta in options_of(EditSettings) if meta.widget is not None]


#: The settings on the page, in the order of the form's inputs after the video.
FORM_FIELDS = tuple(f.name for f, _ in _form_options())


def form_settings(*values, family: str = "sd") -> EditSettings:
    """The form's values (in :data:`FORM_FIELDS` order) as :class:`EditSettings` for a ``family``
    checkpoint.

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
    return EditSettings.for_family(family, **settings)


def form_prompts(text: str) -> list[str]:
    """The prompt box's prompts: one per non-empty line."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def widget_label(name: str) -> str:
    """A field's widget label without its parenthesised hint: 'Width (0: ...)' -> 'Width'."""
    spec = dict((f.name, meta) for f, meta in options_of(EditSettings))[name].widget
    return re.sub(r"\s*\(.*\)$", "", spec.label)


def _flag_words() -> dict[str, tuple[str, tuple]]:
    """``--flag`` -> (how the page names it, its choices), for every option of the schema."""
    words = {}
    for f, meta in options_of(EditSettings):
        name = f'"{widget_label(f.name)}"' if meta.widget is not None else f.name.replace("_", " ")
        words[flag(f.name)] = (name, tuple(meta.choices))
    return words


def page_text(text: str) -> str:
    """``text`` in the page's words: command-line flags become the widgets' labels
    ('--flow dis' -> '"Optical flow" set to dis'), and argparse's '%%' becomes '%'."""
    words = _flag_words()

    def name(match: re.Match) -> str:
        option, value = match["flag"], match["value"]
        label, choices = words.get(option, (option.lstrip("-").replace("-", " "), ()))
        if value and value in choices:
            return f"{label} set to {value}"
        return label + (f" {value}" if value else "")

    text = re.sub(r"(?:CLI: )?(?P<flag>--[a-z][a-z0-9-]*)(?: (?P<value>[\w.+=-]+))?", name, text)
    return text.replace("%%", "%")


def page_message(error: BaseException, video: str | os.PathLike | None = None) -> str:
    """What the page shows of ``error``: one line in the page's words, the uploaded file called by
    its name instead of Gradio's temporary path, escaped, since Gradio renders messages as HTML (a
    '<urlopen error ...>' in them used to hide the rest of the line)."""
    text = error_line(error)
    if video is not None:
        for path in {str(video), str(pathlib.Path(video).absolute())}:
            text = text.replace(path, pathlib.Path(video).name)
    text = re.sub(re.escape(_upload_folder()) + r"/[^/\s]+/", "", text)  # any other uploaded file
    return html.escape(page_text(text), quote=False)


def _upload_folder() -> str:
    from gradio.utils import get_upload_folder

    return get_upload_folder()


def run_form(editor: Editor, video, *values, stop: threading.Event | None = None,
             on_prompt: Callable[[int, int, str], None] | None = None,
             on_phase: Callable[[str], None] | None = None) -> Iterator[Result]:
    """What the Edit button does: the form's values -> each prompt's written :class:`Result`.

    The prompt box holds one prompt per line. Every failure reaches the page as one line
    (``gradio.Error``, or ``gradio.Warning`` for one prompt among several) and the server's log as
    one line; a traceback is logged only for what is not the user's input (a bug or a crash).
    A Stop ends the generator with a warning and keeps what was already written.

    Args:
        on_prompt: called with (index, number of prompts, prompt) before each prompt's sampling.
    """
    gr = _gradio()
    written = 0
    try:
        if not video:
            raise ValueError("upload a source video first")
        settings = form_settings(*values, family=editor.pipeline_class.family)
        prompts = form_prompts(settings.prompt) or [""]  # an empty prompt: the settings' check says so

        def prompt_starts(index: int, prompt: str) -> None:
            if on_prompt is not None:
                on_prompt(index, len(prompts), prompt)

        with warnings_on_the_page(gr, video):
            for result in editor.edit(video, settings, prompts, stop=stop, on_prompt=prompt_starts, on_phase=on_phase):
                if result.error is None:
                    written += 1
                    yield result
                elif len(prompts) == 1:
                    raise result.error
                else:
                    _report(result.error, video)
                    gr.Warning(f"{html.escape(repr(result.prompt), quote=False)} failed: "
                               f"{page_message(result.error, video)}")
    except EditStopped:
        logger.info("edit stopped by the visitor after %d result(s)", written)
        gr.Warning("stopped: the prompt that was running left no file" + (f"; {written} result(s) kept" if written else ""))
        return
    except Exception as error:
        raise gr.Error(_report(error, video), print_exception=False) from error


@contextlib.contextmanager
def warnings_on_the_page(gr, video):
    """The package's warnings while an edit runs (a prompt cut to the text encoder's length, an
    inversion that could not be cached) shown on the page as well as in the server's log. Edits
    run one at a time (the queue), so what is logged meanwhile is this edit's."""

    class ToPage(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.name != logger.name:  # the page's own lines already reach the page
                gr.Warning(page_message(UserWarning(record.getMessage()), video))

    handler = ToPage(logging.WARNING)
    package = logging.getLogger("flatten_video")
    package.addHandler(handler)
    try:
        yield
    finally:
        package.removeHandler(handler)


def _report(error: BaseException, video) -> str:
    """Log ``error`` (one line for the user's errors, a traceback for the rest); its page message."""
    message = page_message(error, video)
    if isinstance(error, USER_ERRORS):
        logger.warning("edit refused: %s", html.unescape(message))
    else:  # a bug or a crash: keep the whole story for the log
        logger.error("edit failed", exc_info=error)
    return message


class StopButtons:
    """One stop flag per edit a visitor submitted, so Stop ends that visitor's edits only, the
    running one and those still waiting in the queue.

    The Edit button first arms a flag (at once, outside the queue); the edit takes the oldest
    armed flag of its session when it starts (an edit with none, from the API, makes its own).
    """

    def __init__(self):
        self._armed: dict[str, list[threading.Event]] = {}
        self._running: dict[str, list[threading.Event]] = {}
        self._lock = threading.Lock()

    def arm(self, session: str) -> None:
        with self._lock:
            self._armed.setdefault(session, []).append(threading.Event())

    @contextlib.contextmanager
    def edit(self, session: str):
        with self._lock:
            armed = self._armed.get(session) or [threading.Event()]
            flag_ = armed.pop(0)
            self._running.setdefault(session, []).append(flag_)
        try:
            yield flag_
        finally:
            with self._lock:
                self._running[session].remove(flag_)
                for flags in (self._armed, self._running):  # no entry per past visitor
                    if not flags.get(session, True):
                        del flags[session]

    def stop(self, session: str) -> int:
        """Stop every edit of ``session``; how many there were."""
        with self._lock:
            flags = self._armed.get(session, []) + self._running.get(session, [])
        for flag_ in flags:
            flag_.set()
        return len(flags)


class PageProgress:
    """The page's progress line.

    Gradio follows the pipeline's tqdm bars (optical flow, DDIM inversion, sampling) by itself
    (``track_tqdm``); this adds, with several prompts, a level saying which prompt runs, and
    checks the Stop flag at every tick of those bars, so a stop also ends an inversion mid-way.
    """

    def __init__(self, progress, stop: threading.Event):
        self.progress = progress
        self._prompt = None  # the level of the prompts, once there is one
        update = progress.update

        def update_or_stop(n=1):
            check_stop(stop)
            return update(n)

        # Gradio's patched tqdm.update calls this object's update: the one hook inside a phase.
        progress.update = update_or_stop

    def phase(self, desc: str) -> None:
        self.progress(0.0, desc=desc)

    def prompt(self, index: int, total: int, prompt: str) -> None:
        if total < 2:
            return
        desc = f"Prompt {index + 1}/{total}: {prompt}"
        if self._prompt is None:
            self.progress.tqdm(None, desc=desc, total=total, unit="prompts")
            self._prompt = self.progress.iterables[-1] if self.progress.iterables else None
        elif self._prompt is not None:
            self._prompt.desc, self._prompt.index = desc, index
            self.progress.update(0)  # send it


# --------------------------------------------------------------------------- the page


def build_app(editor: Editor, max_upload_mb: float | None = None):
    """The Gradio page (a ``gradio.Blocks``) over ``editor``; call ``.launch()`` to serve it
    (with ``max_file_size`` set to ``max_upload_mb``, as :func:`run_web` does)."""
    gr = _gradio()
    default = EditSettings.for_family(editor.pipeline_class.family, prompt="")
    stops = StopButtons()
    with gr.Blocks(title="flatten-video", analytics_enabled=False) as app:
        gr.Markdown(_header(editor, max_upload_mb))
        results = gr.State([])  # this visitor's results, newest first
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="Source video", sources=["upload"], elem_id="source")
                widgets = _build_widgets(gr, default, editor.max_frames, top=True)
                with gr.Row():
                    run = gr.Button("Edit", variant="primary", elem_id="edit")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
                widgets.update(_build_widgets(gr, default, editor.max_frames, top=False))
                gr.Examples([[str(SAMPLE_VIDEO), prompt] for prompt in EXAMPLE_PROMPTS], inputs=[video, widgets["prompt"]],
                            label="The bundled sample clip (a pan over a photo of a cat)")
            with gr.Column():
                shown = gr.Video(label="Edited video", interactive=False, elem_id="result")
                with gr.Row():
                    side_by_side = gr.DownloadButton("Download side by side (mp4)", visible=False, elem_id="side-by-side")
                    gif = gr.DownloadButton("Download GIF", visible=False, elem_id="gif")
                gallery = gr.Gallery(label="Results since you opened the page", columns=3, object_fit="contain",
                                     elem_id="gallery")
        inputs = [video, results, *(widgets[name] for name in FORM_FIELDS)]
        outputs = [shown, side_by_side, gif, gallery, results]

        def arm(request: gr.Request):
            stops.arm(_session(request))

        # Gradio finds gr.Request and gr.Progress among named positional parameters only (a
        # progress parameter after *values was ignored, and the page showed no phases).
        def edit(video, kept, request: gr.Request, progress=gr.Progress(track_tqdm=True), *values):
            with stops.edit(_session(request)) as stopped:
                page = PageProgress(progress, stopped)
                kept = list(kept or [])
                for result in run_form(editor, video, *values, stop=stopped, on_prompt=page.prompt,
                                       on_phase=page.phase):
                    kept.insert(0, result)
                    yield _shown(gr, result) + (_gallery(kept), kept)

        def stop_edits(request: gr.Request):
            stops.stop(_session(request))  # the edit itself then says what was kept

        def select(kept, event: gr.SelectData):
            return _shown(gr, kept[event.index])

        run.click(arm, None, None, queue=False, api_visibility="private").then(
            edit, inputs=inputs, outputs=outputs, api_name="edit")
        stop.click(stop_edits, None, None, queue=False, api_visibility="private")
        gallery.select(select, inputs=results, outputs=[shown, side_by_side, gif], api_visibility="private")
    app.queue(default_concurrency_limit=1)  # one edit at a time: each fills the device; the queue shows the rest their place
    _without_time_estimates(app)
    return app


class _NoAverages(dict):
    """Gradio's per-event average duration, never learnt: an edit's length depends on its frames,
    steps and model, and for a generator Gradio times only the first result, so its average (shown
    as ``elapsed/estimate``) fell short of the time already spent. Without one, the page shows the
    elapsed time alone, and the progress bars say how far the running edit is."""

    def __contains__(self, key) -> bool:
        return False

    def __getitem__(self, key):
        from gradio.queueing import ProcessTime

        return ProcessTime()  # a throwaway: what Gradio adds to it is forgotten


def _without_time_estimates(app) -> None:
    queue = getattr(app, "_queue", None)
    if queue is not None and hasattr(queue, "process_time_per_fn"):
        queue.process_time_per_fn = _NoAverages()


def _session(request) -> str:
    return getattr(request, "session_hash", None) or ""


def _shown(gr, result: Result) -> tuple:
    """The player and the download buttons for ``result``."""
    return (
        str(result.video),
        gr.DownloadButton(value=str(result.side_by_side), visible=True),
        gr.DownloadButton(value=str(result.gif), visible=True),
    )


def _gallery(results: list[Result]) -> list[tuple[str, str]]:
    return [(str(result.video), result.caption) for result in results]


def _header(editor: Editor, max_upload_mb: float | None) -> str:
    limits = [f"uploads up to {max_upload_mb:g} MB"] if max_upload_mb else []
    if editor.max_frames:
        limits.append(f"at most {editor.max_frames} frames an edit")
    return (
        "# flatten-video\nTraining-free text-to-video editing with optical-flow-guided attention "
        f"(FLATTEN, ICLR 2024). Model: `{_model_name(editor.model)}`{_lora_note(editor)} on `{editor.device}` "
        f"({str(editor.dtype).removeprefix('torch.')}). Several prompts, one per line, are edited from one "
        "inversion. Edits run one at a time; others wait in the queue"
        + (f"; {', '.join(limits)}." if limits else ".")
    )


def _model_name(model: str) -> str:
    """A hub id as it is; a local folder or file by its name (where it lies is the server's business)."""
    return pathlib.Path(model).name if os.path.exists(model) else model


def _build_widgets(gr, default: EditSettings, max_frames: int | None = None, top: bool = True) -> dict:
    """One widget per :data:`FORM_FIELDS` entry of the top of the form (``top``) or of its
    sections, from its :class:`~flatten_video.app.settings.Widget`, with the option's help as its
    info; each section is one folded accordion, in the order the fields first name them. Options
    the model's family never reads are hidden (at their defaults), and so is a section of only them."""
    widgets = {}
    family = FAMILIES[default.family]
    sections = dict.fromkeys(meta.widget.section for _, meta in _form_options())  # in order of first use
    for section in [s for s in sections if bool(s) != top]:
        fields = [(f, meta) for f, meta in _form_options() if meta.widget.section == section]
        shown = {f.name: any(meta.applies(family.name, method) for method in family.methods) for f, meta in fields}
        accordion = gr.Accordion(section, open=False, visible=any(shown.values())) if section else contextlib.nullcontext()
        with accordion:
            for f, meta in fields:
                widgets[f.name] = _widget(gr, f.name, meta, getattr(default, f.name), max_frames, family, shown[f.name])
    return widgets


def _widget(gr, name: str, meta, value, max_frames: int | None = None, family=FAMILIES["sd"], visible: bool = True):
    spec = meta.widget
    info = page_text(spec.info or meta.help)
    common = dict(label=spec.label, info=info, elem_id=f"option-{name.replace('_', '-')}", visible=visible)
    if spec.zero_is_auto and value is None:
        value = 0
    if name == "prompt":  # the page edits several prompts, one per line, from one inversion
        return gr.Textbox(value=value, placeholder=f"{spec.placeholder}\na white fox, watercolor", lines=3,
                          **{**common, "label": "Prompts, one per line", "info": f"{info}; each line is one edit"})
    if name == "frames":  # k*m + 1 frames for a VAE with temporal factor k: the slider offers only those
        k = family.temporal_factor
        high = min(spec.high, max_frames or spec.high)
        high -= (high - 1) % k
        low = spec.low if k == 1 else k + 1
        return gr.Slider(low, high, value=min(value, high), step=spec.step * k, **common)
    if spec.kind == "text":
        return gr.Textbox(value=value, placeholder=spec.placeholder, **common)
    if spec.kind == "slider":
        return gr.Slider(spec.low, spec.high, value=value, step=spec.step, **common)
    if spec.kind == "number":
        return gr.Number(value=value, precision=0, minimum=spec.low, step=spec.step or 1, **common)
    if spec.kind == "checkboxes":
        return gr.CheckboxGroup(list(spec.options), value=list(value), **common)
    if spec.kind == "dropdown":
        return gr.Dropdown(list(meta.choices), value=value, **common)
    return gr.Checkbox(value=value, **common)


def _lora_note(editor: Editor) -> str:
    if not editor.loras:
        return ""
    return f" with LoRA {', '.join(f'`{_model_name(lora)}`' for lora in editor.loras)} at {editor.lora_scale:g}"


def _gradio():
    # Gradio's usage analytics would call the network; users can still turn them on explicitly.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError as error:
        raise WebUIUnavailable("the web UI needs Gradio: pip install 'flatten-video[web]'") from error
    return gradio


def run_web(args: argparse.Namespace) -> int:
    # The machine, the model and the LoRAs are checked before serving: a bad --device or an
    # uncached model offline is one line now, not an error on every visitor's first edit.
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be between 1 and 65535, got {args.port}")
    check_positive_number("--max-upload-mb", args.max_upload_mb)
    check_num_frames("--max-frames", args.max_frames)
    auth = web_auth(args)
    check_runtime(RuntimeSettings.from_namespace(args))
    editor = Editor(args.model, args.device, args.dtype, args.output_dir, False if args.no_cache else args.cache_dir,
                    args.lora, args.lora_scale, model_config=args.model_config, max_frames=args.max_frames,
                    attention_backend=args.attention_backend, compile=args.compile)
    app = build_app(editor, args.max_upload_mb)
    print(f"flatten-video web UI on http://{args.host}:{args.port} (results in {editor.output_dir.absolute()})", flush=True)
    app.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        allowed_paths=[str(editor.output_dir.absolute())],
        inbrowser=args.open,
        max_file_size=int(args.max_upload_mb * 1024 * 1024),
        auth=auth,
        quiet=True,
    )
    return 0


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def web_auth(args: argparse.Namespace) -> list[tuple[str, str]] | None:
    """The (user, password) pairs the page asks for (Gradio's ``auth``), from ``--auth USER:PASSWORD``
    (repeatable) and ``--auth-file`` (one pair a line). Serving beyond this machine (``--share``,
    or a ``--host`` other than loopback) lets anyone with the address run edits on this GPU and
    fetch the results, so it needs them, or ``--no-auth`` to say it is meant."""
    pairs = [_auth_pair(entry, "--auth") for entry in args.auth or []]
    if args.auth_file:
        path = pathlib.Path(args.auth_file)
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"cannot read --auth-file {path}: {getattr(error, 'strerror', None) or error}") from None
        pairs += [_auth_pair(line.strip(), f"--auth-file {path}") for line in lines
                  if line.strip() and not line.lstrip().startswith("#")]
        if not pairs:
            raise ValueError(f"--auth-file {path} holds no USER:PASSWORD line")
    public = args.share or not is_loopback(args.host)
    if public and not pairs and not args.no_auth:
        where = "a public gradio.live link (--share)" if args.share else f"--host {args.host}"
        raise ValueError(f"{where} lets anyone who has the address run edits on this machine and fetch the results: "
                         "give --auth USER:PASSWORD (or --auth-file), or --no-auth if that is meant")
    return pairs or None


def _auth_pair(entry: str, where: str) -> tuple[str, str]:
    user, colon, password = entry.partition(":")
    if not colon or not user or not password:
        raise ValueError(f"{where}: expected USER:PASSWORD, got {'a line without both' if entry else 'an empty value'}")
    return user, password
