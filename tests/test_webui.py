"""The web UI: the editor behind the page, the form's mapping and errors, and a real server on
localhost driven through gradio_client. The tiny random Stable Diffusion and DIS flow keep it
offline and fast."""

from __future__ import annotations

import pathlib
import socket
import urllib.request

import av
import gradio as gr
import pytest

from flatten_video import cli
from flatten_video.app import webui
from flatten_video.app.settings import EditSettings
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
        webui.run_form(editor, str(source), *form_values(seed=6))
    assert len(inversions) == 1


def test_form_values_become_settings_with_zero_meaning_automatic():
    settings = webui.form_settings(*form_values(stride=0, width=0, height=0, frames=16.0, seed=3.0))

    assert (settings.stride, settings.width, settings.height) == (None, None, None)
    assert settings.frames == 16 and isinstance(settings.frames, int)
    assert settings.seed == 3 and settings.prompt == "a tiger"
    assert webui.form_settings(*form_values(stride=2, width=128)).stride == 2


@pytest.mark.parametrize(
    "video, changes, message",
    [
        (None, {}, "upload a source video"),
        ("source", {"prompt": "  "}, "prompt is empty"),
        ("source", {"width": 90}, "multiple of 8"),
        ("source", {"inject_steps": 5}, "inject-steps"),
        ("missing", {}, "missing.mp4"),
    ],
)
def test_bad_input_is_one_line_on_the_page_and_loads_no_model(tiny_sd_path, source, tmp_path, video, changes, message):
    editor = webui.Editor(str(tiny_sd_path), device="cpu", output_dir=tmp_path / "results")
    video = {"source": str(source), "missing": str(tmp_path / "missing.mp4"), None: None}[video]

    with pytest.raises(gr.Error) as info:
        webui.run_form(editor, video, *form_values(**changes))

    assert message in str(info.value.message)
    assert "\n" not in str(info.value.message)
    assert editor._pipeline is None  # refused before the model loaded
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def test_unknown_model_is_a_clear_error_on_the_page(source, tmp_path):
    editor = webui.Editor(str(tmp_path / "no-such-model"), device="cpu", output_dir=tmp_path / "results")
    with pytest.raises(gr.Error) as info:
        webui.run_form(editor, str(source), *form_values())
    assert "no-such-model" in str(info.value.message)


def test_web_command_listens_on_localhost_without_share_link_by_default(monkeypatch, tmp_path):
    launched = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: launched.update(kwargs))
    monkeypatch.chdir(tmp_path)

    assert cli.main(["web", "--model", "some/model", "--device", "cpu"]) == 0

    assert launched["server_name"] == "127.0.0.1"
    assert launched["share"] is False
    assert launched["allowed_paths"] == [str(tmp_path / "flatten-video-outputs")]


def test_web_command_cache_options(monkeypatch, tmp_path):
    editors = []
    monkeypatch.setattr(webui, "build_app", lambda editor: editors.append(editor) or gr.Blocks())
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: None)
    cli.main(["web", "--output-dir", str(tmp_path / "o"), "--device", "cpu"])
    cli.main(["web", "--cache-dir", str(tmp_path / "c"), "--device", "cpu"])
    cli.main(["web", "--no-cache", "--device", "cpu"])
    assert [e.cache_dir for e in editors] == [tmp_path / "o" / "inversions", tmp_path / "c", None]


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


def test_served_page_edits_a_video_end_to_end(tiny_sd_path, source, tmp_path):
    from gradio_client import Client, handle_file

    editor = webui.Editor(str(tiny_sd_path), device="cpu", output_dir=tmp_path / "results")
    app = webui.build_app(editor)
    port = free_port()
    app.launch(server_name=webui.DEFAULT_HOST, server_port=port, prevent_thread_lock=True, quiet=True,
               allowed_paths=[str(editor.output_dir.absolute())])
    try:
        url = f"http://127.0.0.1:{port}/"
        assert urllib.request.urlopen(url).status == 200
        client = Client(url, verbose=False)
        result = client.predict(handle_file(str(source)), *form_values(), api_name="/edit")
        assert frame_count(pathlib.Path(result)) == (W, H, 3)
        assert len(list(editor.output_dir.glob("*.mp4"))) == 1
        with pytest.raises(Exception, match="multiple of 8"):
            client.predict(handle_file(str(source)), *form_values(width=90), api_name="/edit")
    finally:
        app.close()
