"""The web UI: the editor behind the page, the form's mapping and errors, and a real server on
localhost driven through gradio_client. The tiny random Stable Diffusion and DIS flow keep it
offline and fast."""

from __future__ import annotations

import html
import logging
import pathlib
import re
import socket
import threading
import urllib.error
import urllib.request

import av
import gradio as gr
import pytest
import torch
import torchvision.models._api as tv_weights_api

from flatten_video import cli
from flatten_video.app import web_options, webui
from flatten_video.app.settings import EditSettings, options_of
from flatten_video.video import write_video

from conftest import moving_texture

W, H = 96, 64
FAST = dict(frames=3, width=W, height=H, steps=2, inversion_steps=4, inject_steps=1, flow="dis")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("source") / "walk.mp4"
    write_video(moving_texture(frames=5, height=H, width=W, shift=4), path, fps=8)
    return path


def frame_count(path: pathlib.Path) -> tuple[int, int, int]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.width, stream.height, sum(1 for _ in container.decode(stream))


def form_values(**changes) -> list:
    """The form's inputs after the video, in the page's order, with fast settings."""
    values = {name: getattr(EditSettings(), name) for name in webui.FORM_FIELDS}  # the page's defaults
    values.update(prompt="a tiger", negative_prompt="", frames=3, stride=0, width=W, height=H, crop=False,
                  steps=2, inversion_steps=4, inject_steps=1, guidance=7.5, seed=5, flow="dis",
                  attention="dsta+flatten", variant="II", feature_mode="recompute", side_by_side=False)
    values.update(changes)
    return [values[name] for name in webui.FORM_FIELDS]


def test_editor_writes_an_mp4_named_after_video_prompt_and_seed(tiny_sd_path, source, tmp_path):
    editor = webui.Editor(str(tiny_sd_path), device="cpu", output_dir=tmp_path / "results")
    written = editor(source, EditSettings(prompt="A tiger, high quality!", seed=5, **FAST))

    assert written.parent == tmp_path / "results"
    assert written.name.startswith("walk-a-tiger-high-quality-seed5-") and written.suffix == ".mp4"
    assert frame_count(written) == (W, H, 3)
    assert sorted(p.name for p in written.parent.iterdir()) == sorted([written.name, "inversions"])  # no temp file
    assert len(list((tmp_path / "results" / "inversions").glob("*.safetensors"))) == 1


def test_a_new_prompt_on_the_same_clip_reuses_the_inversion(tiny_sd_path, source, tmp_path, monkeypatch):
    editor = webui.Editor(str(tiny_sd_path), device="cpu", output_dir=tmp_path / "results")
    editor(source, EditSettings(prompt="a tiger", **FAST))
    inversions = []
    monkeypatch.setattr(type(editor.pipeline), "invert_video", lambda *a, **k: inversions.append(a))

    second = editor(source, EditSettings(prompt="a white fox", guidance=5.0, **FAST))

    assert inversions == [] and frame_count(second) == (W, H, 3)
    with pytest.raises(gr.Error):  # other inversion settings: inverted again (here: refused by the patch)
        list(webui.run_form(editor, str(source), *form_values(seed=6)))
    assert len(inversions) == 1


def test_several_prompts_one_inversion_each_with_its_downloads(tiny_sd_path, source, tmp_path, monkeypatch):
    editor = webui.Editor(str(tiny_sd_path), device="cpu", output_dir=tmp_path / "results", cache_dir=False)
    inversions = []
    invert = type(editor.pipeline).invert_video
    monkeypatch.setattr(type(editor.pipeline), "invert_video", lambda *a, **k: inversions.append(1) or invert(*a, **k))
    started = []

    results = list(webui.run_form(editor, str(source), *form_values(prompt="a tiger\n\n  a white fox  \n", seed=7),
                                  on_prompt=lambda index, total, prompt: started.append((index, total, prompt))))

    assert len(inversions) == 1
    assert started == [(0, 2, "a tiger"), (1, 2, "a white fox")]
    assert [r.caption for r in results] == ["a tiger (seed 7)", "a white fox (seed 7)"]
    for result in results:
        assert frame_count(result.video) == (W, H, 3)
        assert frame_count(result.side_by_side) == (2 * W, H, 3)
        assert result.gif.suffix == ".gif" and frame_count(result.gif) == (W, H, 3)
        assert result.side_by_side.parent == result.gif.parent == tmp_path / "results"
    assert "a-white-fox" in results[1].video.name


def test_a_failing_prompt_among_several_is_a_warning_and_the_others_are_kept(tiny_sd_path, source, tmp_path, monkeypatch,
                                                                            caplog):
    editor = webui.Editor(str(tiny_sd_path), device="cpu", output_dir=tmp_path / "results", cache_dir=False)
    call = type(editor.pipeline).__call__

    def fails_for_boom(pipe, *args, prompt="", **kwargs):
        if prompt == "boom":
            raise ValueError("the prompt went boom")
        return call(pipe, *args, prompt=prompt, **kwargs)

    monkeypatch.setattr(type(editor.pipeline), "__call__", fails_for_boom)
    with pytest.warns(UserWarning, match="^'boom' failed: the prompt went boom$"), caplog.at_level(logging.WARNING):
        results = list(webui.run_form(editor, str(source), *form_values(prompt="boom\na white fox")))

    assert [r.prompt for r in results] == ["a white fox"] and frame_count(results[0].video) == (W, H, 3)
    assert [r.getMessage() for r in caplog.records if r.name == webui.logger.name] == ["edit refused: the prompt went boom"]


def test_a_side_by_side_edit_is_its_own_side_by_side_download(tiny_sd_path, source, tmp_path):
    editor = webui.Editor(str(tiny_sd_path), device="cpu", output_dir=tmp_path / "results", cache_dir=False)
    (result,) = editor.edit(source, EditSettings(prompt="a tiger", side_by_side=True, **FAST))
    assert result.side_by_side == result.video and frame_count(result.video) == (2 * W, H, 3)
    assert frame_count(result.gif) == (2 * W, H, 3)


def test_stop_ends_the_edit_and_keeps_no_partial_file(tiny_sd_path, source, tmp_path):
    editor = webui.Editor(str(tiny_sd_path), device="cpu", output_dir=tmp_path / "results", cache_dir=False)
    stop = threading.Event()
    editor.pipeline.set_progress_bar_config(disable=True)

    def press_stop_during_second_prompt(index, total, prompt):
        if index == 1:
            stop.set()  # the next sampling step ends the prompt

    results = list(webui.run_form(editor, str(source), *form_values(prompt="a tiger\na white fox"),
                                  stop=stop, on_prompt=press_stop_during_second_prompt))

    assert [r.prompt for r in results] == ["a tiger"]
    written = sorted(p.name for p in (tmp_path / "results").iterdir())
    assert len(written) == 3 and all("a-tiger" in name for name in written)  # mp4, side by side, GIF; no fox


def test_stop_before_the_edit_starts_loads_no_model(tiny_sd_path, source, tmp_path):
    editor = webui.Editor(str(tiny_sd_path), device="cpu", output_dir=tmp_path / "results")
    stop = threading.Event()
    stop.set()
    assert list(webui.run_form(editor, str(source), *form_values(), stop=stop)) == []
    assert not editor.loaded and not (tmp_path / "results").exists()


def test_stop_flags_belong_to_one_visitor_and_to_the_edits_they_submitted():
    stops = webui.StopButtons()
    stops.arm("ann")
    assert stops.stop("bob") == 0  # Bob has nothing to stop
    with stops.edit("bob") as bob, stops.edit("ann") as ann:
        assert stops.stop("ann") == 1
        assert ann.is_set() and not bob.is_set()
    assert stops.stop("ann") == 0  # a Stop after the edit is not kept for the next one
    with stops.edit("ann") as later:
        assert not later.is_set()


def test_a_stop_reaches_the_pipeline_through_the_progress_ticks():
    class Progress:  # what Gradio's patched tqdm calls on every tick of a pipeline's bar
        iterables = []

        def update(self, n=1):
            ticks.append(n)

    ticks, stop = [], threading.Event()
    progress = Progress()
    webui.PageProgress(progress, stop)
    progress.update()
    stop.set()
    with pytest.raises(webui.EditStopped):
        progress.update()
    assert ticks == [1]


def test_gradio_gives_the_edit_handler_its_progress_and_request(tmp_path):
    """Gradio places gr.Progress (and with it the phases' progress) only in named positional
    parameters; a ``progress=`` after ``*values`` was never filled, and the page showed none."""
    from gradio.helpers import Progress, special_args

    app = webui.build_app(webui.Editor("some/model", device="cpu", output_dir=tmp_path))
    (edit,) = [fn for fn in app.fns.values() if fn.api_name == "edit"]
    inputs, progress_index, _, _ = special_args(edit.fn, inputs=["video", [], *form_values()])

    assert progress_index == 3 and isinstance(inputs[3], Progress) and inputs[3].track_tqdm
    assert edit.queue and edit.concurrency_limit in (1, "default")


def test_the_form_is_the_settings_schema_with_its_help_as_info(tmp_path):
    editor = webui.Editor("some/model", device="cpu", dtype="float32", output_dir=tmp_path, max_frames=48)
    app = webui.build_app(editor, max_upload_mb=50)
    widgets = {b.elem_id.removeprefix("option-").replace("-", "_"): b for b in app.blocks.values()
               if str(getattr(b, "elem_id", "")).startswith("option-")}
    helps = {f.name: meta.widget.info or meta.help for f, meta in options_of(EditSettings) if meta.widget}

    # The page shows the top of the form, then each section in the order the schema first names it.
    form = [(f.name, meta.widget.section) for f, meta in options_of(EditSettings) if meta.widget]
    sections = list(dict.fromkeys(section for _, section in form))
    assert list(widgets) == [name for section in sections for name, own in form if own == section]
    # The handler reads the values by position: its inputs after the video and the results are FORM_FIELDS.
    (edit,) = [fn for fn in app.fns.values() if fn.api_name == "edit"]
    names = [b.elem_id.removeprefix("option-").replace("-", "_") for b in edit.inputs[2:]]
    assert names == list(webui.FORM_FIELDS) == [name for name, _ in form]
    for name, widget in widgets.items():
        assert widget.info.startswith(webui.page_text(helps[name])), name
        assert "--" not in widget.info and "%%" not in widget.info and "=MODEL" not in widget.info, name
    assert widgets["frames"].maximum == 48
    assert widgets["prompt"].lines > 1
    header = next(b.value for b in app.blocks.values() if isinstance(b, gr.Markdown))
    assert "some/model" in header and "cpu" in header and "float32" in header
    assert "50 MB" in header and "48 frames" in header
    examples = next(b for b in app.blocks.values() if isinstance(b, gr.Dataset))
    assert webui.SAMPLE_VIDEO.is_file() and len(examples.samples) == len(webui.EXAMPLE_PROMPTS) >= 2


def test_form_values_become_settings_with_zero_meaning_automatic():
    settings = webui.form_settings(*form_values(stride=0, width=0, height=0, frames=16.0, seed=3.0))

    assert (settings.stride, settings.width, settings.height) == (None, None, None)
    assert settings.frames == 16 and isinstance(settings.frames, int)
    assert settings.seed == 3 and settings.prompt == "a tiger"
    assert webui.form_settings(*form_values(stride=2, width=128)).stride == 2
    assert webui.form_prompts(" a tiger \n\n a fox\n") == ["a tiger", "a fox"]


@pytest.mark.parametrize(
    "video, changes, message",
    [
        (None, {}, "upload a source video first"),
        ("source", {"prompt": "  \n "}, "prompt is empty"),
        ("source", {"width": 90}, '"Width" must be a positive multiple of 8, got 90'),
        ("source", {"inject_steps": 5}, '"Steps with source features" must be between 0 and "Sampling steps" (2)'),
        ("source", {"frames": 9}, '"Frames to edit" is 9; this server edits at most 8 frames'),
        ("missing", {}, "missing.mp4"),
    ],
)
def test_bad_input_is_one_line_on_the_page_one_in_the_log_and_loads_no_model(tiny_sd_path, source, tmp_path, caplog,
                                                                           video, changes, message):
    editor = webui.Editor(str(tiny_sd_path), device="cpu", output_dir=tmp_path / "results", max_frames=8)
    video = {"source": str(source), "missing": str(tmp_path / "missing.mp4"), None: None}[video]

    with pytest.raises(gr.Error) as info, caplog.at_level(logging.WARNING):
        list(webui.run_form(editor, video, *form_values(**changes)))

    shown = str(info.value.message)
    assert message in shown and "\n" not in shown and "--" not in shown
    assert info.value.print_exception is False  # Gradio prints no traceback for it
    (record,) = [r for r in caplog.records if r.name == webui.logger.name]
    assert record.getMessage() == f"edit refused: {shown}" and record.exc_info is None
    assert editor._pipeline is None  # refused before the model loaded
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def test_a_bug_is_logged_with_its_traceback(source, tmp_path, caplog, monkeypatch):
    editor = webui.Editor("some/model", device="cpu", output_dir=tmp_path)
    monkeypatch.setattr(editor, "edit", lambda *a, **k: iter([1 / 0]))
    with pytest.raises(gr.Error) as info, caplog.at_level(logging.WARNING):
        list(webui.run_form(editor, str(source), *form_values()))
    assert info.value.message == "division by zero"
    (record,) = [r for r in caplog.records if r.name == webui.logger.name]
    assert record.exc_info is not None


def test_raft_offline_shows_the_whole_advice_without_flags_or_html(source, tmp_path, monkeypatch):
    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(tv_weights_api, "load_state_dict_from_url", offline)
    editor = webui.Editor("some/model", device="cpu", output_dir=tmp_path)

    with pytest.raises(gr.Error) as info:
        list(webui.run_form(editor, str(source), *form_values(flow="raft")))

    shown = str(info.value.message)
    assert "&lt;urlopen error [Errno -3] Temporary failure in name resolution&gt;" in shown  # shown as typed
    assert '"Optical flow" set to dis' in shown and "--" not in shown and "CLI" not in shown
    assert shown.endswith(".pth by hand and place it at " + f"{torch.hub.get_dir()}/checkpoints/raft_large_C_T_SKHT_V2-ff5fadd5.pth.")
    assert html.unescape(shown).count("<") == 1 and not editor.loaded


def test_page_messages_name_the_uploaded_file_not_gradios_temporary_path():
    from gradio.utils import get_upload_folder

    upload = f"{get_upload_folder()}/3f2a9c/holiday clip.mp4"
    error = ValueError(f"could not read {upload}: not a video (and {get_upload_folder()}/77ab/other.mov)")
    assert webui.page_message(error, upload) == "could not read holiday clip.mp4: not a video (and other.mov)"
    assert webui.page_text("use --flow dis or --window 0; --frames must be; ~40%% more") == (
        'use "Optical flow" set to dis or "Window" 0; "Frames to edit" must be; ~40% more')


def test_unknown_model_is_a_clear_error_on_the_page(source, tmp_path):
    editor = webui.Editor(str(tmp_path / "no-such-model"), device="cpu", output_dir=tmp_path / "results")
    with pytest.raises(gr.Error) as info:
        list(webui.run_form(editor, str(source), *form_values()))
    assert "no-such-model" in str(info.value.message)


def test_web_command_listens_on_localhost_without_share_link_by_default(monkeypatch, tmp_path, tiny_sd_path):
    launched = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: launched.update(kwargs))
    monkeypatch.chdir(tmp_path)

    assert cli.main(["web", "--model", str(tiny_sd_path), "--device", "cpu"]) == 0

    assert launched["server_name"] == "127.0.0.1"
    assert launched["share"] is False
    assert launched["allowed_paths"] == [str(tmp_path / "flatten-video-outputs")]
    assert launched["max_file_size"] == 200 * 1024 * 1024


def test_web_command_cache_and_limit_options(monkeypatch, tmp_path, tiny_sd_path):
    editors, uploads = [], []
    monkeypatch.setattr(webui, "build_app", lambda editor, mb: editors.append(editor) or uploads.append(mb) or gr.Blocks())
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: None)
    model = ["--model", str(tiny_sd_path), "--device", "cpu"]
    cli.main(["web", "--output-dir", str(tmp_path / "o"), *model])
    cli.main(["web", "--cache-dir", str(tmp_path / "c"), *model, "--max-frames", "16", "--max-upload-mb", "5"])
    cli.main(["web", "--no-cache", *model])
    assert [e.cache_dir for e in editors] == [tmp_path / "o" / "inversions", tmp_path / "c", None]
    assert [e.max_frames for e in editors] == [web_options.DEFAULT_MAX_FRAMES, 16, web_options.DEFAULT_MAX_FRAMES]
    assert uploads == [200, 5, 200]


def test_web_editor_applies_loras(tiny_sd_path, tiny_lora_path, source, tmp_path):
    editor = webui.Editor(str(tiny_sd_path), device="cpu", output_dir=tmp_path / "results",
                          loras=[str(tiny_lora_path)], lora_scale=0.5)
    assert "LoRA" in webui._lora_note(editor)
    assert frame_count(editor(source, EditSettings(prompt="a tiger", **FAST))) == (W, H, 3)
    assert editor.pipeline.loras == [(str(tiny_lora_path), 0.5)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_served_page_edits_a_video_end_to_end(tiny_sd_path, source, tmp_path, monkeypatch):
    import tempfile

    from gradio_client import Client, handle_file

    # gradio_client downloads each result into a folder of its own under the system's temp dir and
    # moves it out, leaving the folder: give it the test's, so the run leaves nothing in $TMPDIR.
    (tmp_path / "client").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "client"))
    editor = webui.Editor(str(tiny_sd_path), device="cpu", output_dir=tmp_path / "results")
    app = webui.build_app(editor)
    port = free_port()
    app.launch(server_name=web_options.DEFAULT_HOST, server_port=port, prevent_thread_lock=True, quiet=True,
               allowed_paths=[str(editor.output_dir.absolute())])
    try:
        url = f"http://127.0.0.1:{port}/"
        assert urllib.request.urlopen(url).status == 200
        client = Client(url, verbose=False)
        video, side_by_side, gif, gallery = client.predict(handle_file(str(source)), *form_values(), api_name="/edit")
        assert frame_count(pathlib.Path(video)) == (W, H, 3)
        assert frame_count(pathlib.Path(side_by_side["value"])) == (2 * W, H, 3)  # the buttons' updates
        assert pathlib.Path(gif["value"]).suffix == ".gif" and side_by_side["visible"]
        assert [item["caption"] for item in gallery] == ["a tiger (seed 5)"]
        assert len(list(editor.output_dir.glob("*.mp4"))) == 2 and len(list(editor.output_dir.glob("*.gif"))) == 1
        with pytest.raises(Exception, match="multiple of 8"):
            client.predict(handle_file(str(source)), *form_values(width=90), api_name="/edit")
    finally:
        app.close()


@pytest.mark.parametrize("argv, message", [
    (["--device", "foo"], "unknown --device 'foo'; use cuda, cuda:N, mps or cpu"),
    (["--device", "cpu", "--dtype", "float16"], "--dtype float16 does not run on the CPU"),
    (["--device", "cpu", "--model", "someone/uncached-model"], "HF_HUB_OFFLINE is set: the model someone/uncached-model is not in"),
    (["--device", "cpu", "--port", "70000"], "--port must be between 1 and 65535, got 70000"),
    (["--device", "cpu", "--max-upload-mb", "nan"], "--max-upload-mb must be a finite number, got nan"),
    (["--device", "cpu", "--max-frames", "1"], "--max-frames must be at least 2 frames"),
])
def test_web_command_refuses_a_machine_or_model_it_cannot_serve_before_serving(argv, message, monkeypatch, capsys):
    launched = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: launched.append(kwargs))
    assert cli.main(["web", *argv]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"flatten-video: error: {message}") and launched == []


@pytest.mark.parametrize("argv, message", [
    (["--share"], "a public gradio.live link \\(--share\\) lets anyone who has the address run edits"),
    (["--host", "0.0.0.0"], "--host 0.0.0.0 lets anyone who has the address run edits on this machine"),
    (["--host", "0.0.0.0", "--auth", "nocolon"], "--auth: expected USER:PASSWORD"),
])
def test_serving_beyond_this_machine_needs_a_password(argv, message, monkeypatch, tmp_path, tiny_sd_path, capsys):
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: pytest.fail("served"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["web", "--model", str(tiny_sd_path), "--device", "cpu", *argv]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0]), err


def test_auth_pairs_reach_gradio_and_no_auth_is_on_purpose(monkeypatch, tmp_path, tiny_sd_path):
    launched = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: launched.update(kwargs))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "users.txt").write_text("# who may edit\nana:s3cret\n\nbo:pa:ss\n")
    assert cli.main(["web", "--model", str(tiny_sd_path), "--device", "cpu", "--host", "0.0.0.0", "--auth", "me:pw",
                     "--auth-file", str(tmp_path / "users.txt")]) == 0
    assert launched["auth"] == [("me", "pw"), ("ana", "s3cret"), ("bo", "pa:ss")]
    assert cli.main(["web", "--model", str(tiny_sd_path), "--device", "cpu", "--share", "--no-auth"]) == 0
    assert launched["auth"] is None and launched["share"] is True
    assert cli.main(["web", "--model", str(tiny_sd_path), "--device", "cpu"]) == 0 and launched["auth"] is None


def test_the_model_loading_phase_shows_only_when_the_model_loads(tiny_sd_path, source, tmp_path):
    editor = webui.Editor(str(tiny_sd_path), device="cpu", output_dir=tmp_path / "results", max_frames=8)
    phases = []
    with pytest.raises(gr.Error):  # refused before any model loads: no "Loading the model" shown
        list(webui.run_form(editor, str(source), *form_values(frames=9), on_phase=phases.append))
    assert phases == [] and not editor.loaded
    list(webui.run_form(editor, str(source), *form_values(), on_phase=phases.append))
    list(webui.run_form(editor, str(source), *form_values(), on_phase=phases.append))
    assert phases == ["Loading the model"] and editor.loaded  # the first edit that runs, once


def test_the_packages_warnings_reach_the_page(tiny_sd_path, source, tmp_path, monkeypatch):
    """A prompt cut to the text encoder's length is said on the page, not only in the server's log."""
    shown = []
    monkeypatch.setattr(gr, "Warning", lambda message, *args, **kwargs: shown.append(message))
    editor = webui.Editor(str(tiny_sd_path), device="cpu", output_dir=tmp_path / "results")
    long_prompt = " ".join(["a very detailed painting of a tiger"] * 20)
    results = list(webui.run_form(editor, str(source), *form_values(prompt=long_prompt)))
    assert len(results) == 1
    cut = [message for message in shown if "longer than the text encoder" in message]
    assert cut and "\n" not in cut[0]
    assert logging.getLogger("flatten_video").handlers == [h for h in logging.getLogger("flatten_video").handlers
                                                           if type(h).__name__ != "ToPage"]  # removed after the edit
