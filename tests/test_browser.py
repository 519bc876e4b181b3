"""The web page in a real browser: Debian's Chromium, headless, driven by Playwright for Python,
against a ``flatten-video web`` server process on the tiny random Stable Diffusion (offline; DIS
flow, since RAFT's weights are not there). One server serves every check of this module.

Screenshots go to each test's tmp folder; with ``FLATTEN_VIDEO_SCREENSHOT=docs/webui.png`` the
result page's screenshot is also written there (the README's picture).
"""

from __future__ import annotations

import io
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import av
import pytest

import flatten_video
from flatten_video.video import write_video

from conftest import moving_texture

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As the machine's probe starts it: no sandbox (CI runs as root), and nothing that calls Google.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
W, H, FRAMES, FPS = 96, 64, 4, 8
MAX_FRAMES, MAX_UPLOAD_MB = 8, 1

pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"no Chromium at {CHROMIUM} for the browser tests (Debian: apt-get install -y chromium; .ci/run does)",
)

# Every progress line, toast and error the page shows, in order, whatever their lifetime.
RECORD = """() => {
  window.seen = [];
  const note = () => {
    for (const el of document.querySelectorAll('.progress-level-inner, .progress-text, [data-testid=toast-text]')) {
      const text = el.textContent.trim();
      if (text && window.seen[window.seen.length - 1] !== text) window.seen.push(text);
    }
  };
  new MutationObserver(note).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stream_info(path: pathlib.Path) -> tuple[int, int, int, float]:
    """(width, height, decoded frames, duration in seconds) of a video file."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return stream.width, stream.height, frames, frames / float(stream.average_rate)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, pathlib.Path]:
    folder = tmp_path_factory.mktemp("browser")
    clip = folder / "walk.mp4"
    write_video(moving_texture(frames=6, height=H, width=W, shift=4), clip, fps=FPS)
    big = folder / "big.mp4"  # over the upload limit; never decoded
    big.write_bytes(os.urandom(int(1.2 * MAX_UPLOAD_MB * 1024 * 1024)))
    return {"clip": clip, "big": big, "outputs": folder / "outputs", "log": folder / "server.log"}


@pytest.fixture(scope="module")
def server(tiny_sd_path, files):
    """``flatten-video web`` on a free localhost port; yields its URL."""
    port = free_port()
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(pathlib.Path(flatten_video.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1",
        TORCH_HOME=str(files["log"].parent / "torch-home"),  # no RAFT weights: nothing to find or fetch
        # Chromium and the server share the machine: torch's spinning thread pool against a busy
        # renderer made a 2-second edit take 30 on 2 cores.
        OMP_NUM_THREADS="1",
    )
    command = [sys.executable, "-m", "flatten_video", "web", "--model", str(tiny_sd_path), "--device", "cpu",
               "--port", str(port), "--output-dir", str(files["outputs"]), "--max-frames", str(MAX_FRAMES),
               "--max-upload-mb", str(MAX_UPLOAD_MB)]
    with open(files["log"], "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"flatten-video web did not start:\n{files['log'].read_text()}")
                time.sleep(0.25)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def visit(browser, server):
    """Open the page as a new visitor (own session); every page opened is closed afterwards."""
    contexts = []

    def open_page():
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(server)
        page.wait_for_selector("#edit")
        page.evaluate(RECORD)
        return page

    yield open_page
    for context in contexts:
        context.close()


def seen(page) -> list[str]:
    return page.evaluate("window.seen")


def wait_seen(page, *texts: str) -> str:
    """The first line the page showed containing all ``texts`` (waits for it)."""
    page.wait_for_function("(texts) => window.seen.some(t => texts.every(x => t.includes(x)))", arg=list(texts))
    return next(t for t in seen(page) if all(x in t for x in texts))


def toast(page, text: str) -> str:
    """The message of the toast containing ``text`` (waits for it)."""
    locator = page.locator("[data-testid=toast-text]", has_text=text).first
    locator.wait_for()
    return locator.inner_text()


def open_form(page) -> None:
    """Unfold the form's sections (their widgets render when opened) and pick DIS flow."""
    for section in ("Frames and size", "Diffusion", "Method (ablations)"):
        page.get_by_text(section, exact=True).click()
    page.click("#option-flow input")
    page.get_by_role("option", name="dis").click()


def fill_numbers(page, **numbers) -> None:
    """Set numbers by option name."""
    for name, value in numbers.items():
        box = page.locator(f"#option-{name.replace('_', '-')} input[type=number]")
        box.fill(str(value))
        box.press("Enter")


def fill(page, prompt: str, **numbers) -> None:
    """Type ``prompt`` and set numbers by option name."""
    fill_numbers(page, **numbers)
    page.fill("#option-prompt textarea", prompt)


def save_small_screenshot(page, path: pathlib.Path) -> None:
    """The top of the page (1280x900) in 64 colors: small enough to commit (the README's picture)."""
    from PIL import Image

    page.evaluate("window.scrollTo(0, 0)")
    image = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def upload(page, path: pathlib.Path) -> None:
    page.set_input_files("#source input[type=file]", str(path))
    page.wait_for_selector("#source video")


def outputs(files) -> list[str]:
    folder = files["outputs"]
    return sorted(p.name for p in folder.glob("*") if p.is_file()) if folder.exists() else []


def test_bad_input_is_one_line_on_the_page_and_in_the_log(visit, files, tmp_path):
    page = visit()
    logged = len(files["log"].read_text())
    page.click("#edit")
    shown = [toast(page, "upload a source video first")]
    upload(page, files["clip"])
    open_form(page)
    fill(page, "   ", frames=FRAMES, width=W, height=H)
    page.click("#edit")
    shown.append(toast(page, "the prompt is empty"))
    fill(page, "a tiger", width=90)
    page.click("#edit")
    shown.append(toast(page, "multiple of 8"))
    page.screenshot(path=tmp_path / "bad-input.png", full_page=True)

    assert shown[2] == '"Width" must be a positive multiple of 8, got 90'
    assert all("\n" not in line and "--" not in line for line in shown)
    log = files["log"].read_text()[logged:]
    assert "Traceback" not in log
    assert [line.split("edit refused: ", 1)[1] for line in log.splitlines() if "edit refused: " in line] == shown
    assert not any("walk" in name for name in outputs(files))

    page = visit()
    page.set_input_files("#source input[type=file]", str(files["big"]))  # Gradio's own check, before sending
    line = toast(page, "exceed the maximum allowed size")
    assert "big.mp4" in line and "\n" not in line


def test_an_edit_of_the_sample_clip_shows_its_phases_and_its_results(visit, files, tmp_path):
    page = visit()
    header = page.locator(".prose").first.inner_text()
    assert "tiny-sd" in header and "cpu" in header and "float32" in header
    page.get_by_text("a cat made of colorful origami paper").click()  # the bundled clip, two prompts
    page.wait_for_selector("#source video")
    assert page.input_value("#option-prompt textarea") == "a cat made of colorful origami paper\na bronze statue of a cat"
    open_form(page)
    fill_numbers(page, frames=FRAMES, width=W, height=H, steps=5, inversion_steps=10, inject_steps=2)
    page.click("#edit")
    page.wait_for_function("() => document.querySelectorAll('#gallery video').length >= 2")
    page.wait_for_selector("#side-by-side", state="visible")
    page.wait_for_function("() => document.querySelector('#result video')?.duration > 0")
    page.screenshot(path=tmp_path / "results.png", full_page=True)
    if os.environ.get("FLATTEN_VIDEO_SCREENSHOT"):
        save_small_screenshot(page, pathlib.Path(os.environ["FLATTEN_VIDEO_SCREENSHOT"]))

    assert wait_seen(page, "DDIM inversion - ").endswith("%")
    assert wait_seen(page, "Prompt 1/2: a cat made of colorful origami paper - ", "Sampling - ").endswith("%")
    assert wait_seen(page, "Prompt 2/2: a bronze statue of a cat - ", "Sampling - ").endswith("%")
    captions = page.locator("#gallery").inner_text()
    assert "a cat made of colorful origami paper (seed 66)" in captions and "a bronze statue of a cat (seed 66)" in captions

    written = outputs(files)
    edits = [name for name in written if name.endswith(".mp4") and not name.endswith("-side-by-side.mp4")]
    assert len(edits) == 2 and len(written) == 6  # each: mp4, side by side, GIF
    # 4 of the sample's 48 frames at 12 fps: every 12th, so 1 fps.
    for name in edits:
        assert stream_info(files["outputs"] / name) == (W, H, FRAMES, pytest.approx(FRAMES / 1.0))
        assert stream_info(files["outputs"] / name.replace(".mp4", "-side-by-side.mp4"))[:3] == (2 * W, H, FRAMES)
    assert page.evaluate("document.querySelector('#result video').duration") == pytest.approx(FRAMES / 1.0, abs=0.15)


def test_a_second_visitor_sees_the_queue_and_stop_ends_an_edit_cleanly(visit, files, tmp_path):
    first, second = visit(), visit()
    upload(first, files["clip"])
    open_form(first)
    fill(first, "a tiger", frames=FRAMES, width=W, height=H, steps=100, inversion_steps=200, inject_steps=2)
    before = outputs(files), sorted((files["outputs"] / "inversions").glob("*"))
    first.click("#edit")
    wait_seen(first, "DDIM inversion - ")  # a long inversion is running

    second.click("#edit")
    queued = wait_seen(second, "queue: 1/1")
    assert queued.startswith("queue: 1/1")
    time.sleep(1.5)  # long enough for a stale estimate to show itself, were one shown
    waited = [line for line in seen(second) if line.startswith("queue: 1/1")]
    # Elapsed time only: Gradio's average (of earlier edits' first results) is no estimate of this one.
    assert all("/" not in line.split("|", 1)[-1] for line in waited), waited
    second.screenshot(path=tmp_path / "queued.png")
    first.click("#stop")
    stopped = toast(first, "stopped")
    first.screenshot(path=tmp_path / "stopped.png")

    assert stopped == "stopped: the prompt that was running left no file"
    assert toast(second, "upload a source video first")  # then the second visitor's edit ran
    assert (outputs(files), sorted((files["outputs"] / "inversions").glob("*"))) == before  # nothing partial
    assert "Traceback" not in files["log"].read_text()
