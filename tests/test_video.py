"""Tests for flatten_video.video: sizes, reading, writing, atomic output and error messages."""

from __future__ import annotations

import importlib.resources
import os
import wave

import av
import numpy as np
import pytest
import torch
from PIL import Image

from flatten_video import video as video_mod
from flatten_video.video import Video, VideoError, read_video, working_size, write_video

NUM = 20  # frames in the generated clips
FPS = 10.0
W, H = 96, 64  # non-square source size


def level_clip(n: int = NUM, w: int = W, h: int = H) -> torch.Tensor:
    """Frame i is flat gray at level (i + 1) * 12 / 255, so the source index of a read frame is recoverable."""
    levels = (torch.arange(n, dtype=torch.float32) + 1) * 12 / 255
    return levels.view(n, 1, 1, 1).expand(n, 3, h, w).clone()


def frame_indices(frames: torch.Tensor) -> list[int]:
    return [round(float(f.mean()) * 255 / 12) - 1 for f in frames]


def texture_clip(n: int = 8, w: int = W, h: int = H) -> torch.Tensor:
    """Smooth moving colour gradients: content that both H.264 and a 256-colour GIF keep well."""
    y = torch.linspace(0, 1, h).view(1, h, 1)
    x = torch.linspace(0, 1, w).view(1, 1, w)
    t = torch.arange(n, dtype=torch.float32).view(n, 1, 1) / (4 * n)
    r = (0.2 + 0.6 * x + t).expand(n, h, w)
    g = (0.2 + 0.6 * y).expand(n, h, w)
    b = (0.5 + 0.3 * torch.sin(6 * x + 4 * y + 8 * t)).expand(n, h, w)
    return torch.stack([r, g, b], dim=1).clamp(0, 1)


@pytest.fixture(scope="module")
def clip_mp4(tmp_path_factory) -> str:
    return str(write_video(level_clip(), tmp_path_factory.mktemp("clip") / "levels.mp4", fps=FPS))


@pytest.fixture(scope="module")
def clip_gif(tmp_path_factory) -> str:
    return str(write_video(level_clip(), tmp_path_factory.mktemp("clip") / "levels.gif", fps=FPS))


def raises(match: str, fn, *args, **kwargs) -> str:
    """Call fn, expect a one-line VideoError containing every word of `match` (case-insensitive)."""
    with pytest.raises(VideoError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for word in match.split("|"):
        assert word.lower() in message.lower(), f"{word!r} not in {message!r}"
    return message


# --------------------------------------------------------------------------------------------- working_size


@pytest.mark.parametrize(
    "size, kwargs, expected",
    [
        ((96, 64), {}, (768, 512)),  # landscape: short side -> 512
        ((480, 640), {}, (512, 704)),  # portrait: 682.7 rounds to 704
        ((1920, 1080), {}, (896, 512)),  # 910.2 rounds to 896
        ((1280, 720), {"short_side": 384}, (704, 384)),  # 682.7 -> 704
        ((640, 384), {}, (832, 512)),  # 853.3 -> 832
        ((1000, 10), {"short_side": 8}, (832, 64)),  # half up (12.5 -> 13) and never below `multiple`
        ((96, 64), {"short_side": 64, "multiple": 8}, (96, 64)),
        ((96, 64), {"target_width": 192}, (192, 128)),  # height follows the aspect ratio
        ((96, 64), {"target_height": 256}, (384, 256)),
        ((1920, 1080), {"target_width": 512}, (512, 320)),  # 288 -> nearest multiple of 64
        ((96, 64), {"target_width": 640, "target_height": 360}, (640, 360)),  # both: used as they are
    ],
)
def test_working_size(size, kwargs, expected):
    assert working_size(*size, **kwargs) == expected


@pytest.mark.parametrize(
    "kwargs",
    [{"target_width": 100}, {"target_height": 0}, {"target_width": -64}, {"target_width": 512, "target_height": 330}],
)
def test_working_size_rejects_sizes_not_multiple_of_8(kwargs):
    raises("multiple of 8", working_size, 96, 64, **kwargs)


def test_working_size_rejects_empty_source():
    raises("positive", working_size, 0, 64)


# --------------------------------------------------------------------------------------------- reading


def test_read_all_frames_mp4(clip_mp4):
    v = read_video(clip_mp4, NUM, width=W, height=H)
    assert isinstance(v, Video)
    assert v.frames.shape == (NUM, 3, H, W) and v.frames.dtype == torch.float32
    assert 0 <= float(v.frames.min()) and float(v.frames.max()) <= 1
    assert (v.total_frames, v.stride, v.fps) == (NUM, 1, FPS)
    assert frame_indices(v.frames) == list(range(NUM))


def test_default_stride(clip_mp4):
    v = read_video(clip_mp4, 6, width=W, height=H)  # 20 // 6 = 3
    assert v.stride == 3 and v.fps == pytest.approx(FPS / 3)
    assert frame_indices(v.frames) == [0, 3, 6, 9, 12, 15]


def test_explicit_stride(clip_gif):
    v = read_video(clip_gif, 5, stride=4, width=W, height=H)
    assert (v.stride, v.total_frames) == (4, NUM)
    assert frame_indices(v.frames) == [0, 4, 8, 12, 16]


def test_decoding_stops_after_last_needed_frame(clip_mp4, monkeypatch):
    decoded, fitted = [], []
    real_decode, real_fit = video_mod._decode, video_mod._fit

    def counting_decode(path):
        for frame in real_decode(path):
            decoded.append(frame)
            yield frame

    def counting_fit(*args):
        fitted.append(1)
        return real_fit(*args)

    monkeypatch.setattr(video_mod, "_decode", counting_decode)
    monkeypatch.setattr(video_mod, "_fit", counting_fit)
    v = read_video(clip_mp4, 3, stride=2, width=W, height=H)
    assert frame_indices(v.frames) == [0, 2, 4]
    assert len(decoded) == 5 and len(fitted) == 3


@pytest.mark.parametrize(
    "kwargs, size",
    [
        ({}, working_size(W, H)),  # (768, 512)
        ({"short_side": 128}, working_size(W, H, short_side=128)),  # (192, 128)
        ({"width": 128}, working_size(W, H, target_width=128)),  # (128, 64): height rounded to 64
        ({"height": 128}, (192, 128)),
        ({"width": 64, "height": 96}, (64, 96)),  # portrait target from a landscape source
    ],
)
def test_working_sizes_when_reading(clip_mp4, kwargs, size):
    v = read_video(clip_mp4, 2, **kwargs)
    assert v.size == size and v.frames.shape == (2, 3, size[1], size[0])


def test_crop_versus_resize(tmp_path):
    frames = torch.full((2, 3, H, W), 0.5)
    frames[:, :, :, :16] = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)  # red stripe on the far left
    path = write_video(frames, tmp_path / "stripe.mp4")
    squeezed = read_video(path, 2, width=64, height=64)
    cropped = read_video(path, 2, width=64, height=64, crop=True)
    assert squeezed.size == cropped.size == (64, 64)
    # Resizing keeps the stripe (squeezed to ~11 px); a centered 64x64 crop of the 96x64 source cuts it away.
    assert float(squeezed.frames[:, 0, :, :5].mean()) > 0.9
    assert float(cropped.frames[:, 0, :, :5].mean()) == pytest.approx(0.5, abs=0.05)
    # Cropping does not distort: the gray middle of the source stays gray up to the edges.
    assert float((cropped.frames - 0.5).abs().mean()) < 0.03


@pytest.mark.parametrize("ext, tolerance", [("mp4", 0.02), ("gif", 0.02)])
def test_round_trip_preserves_content(tmp_path, ext, tolerance):
    frames = texture_clip()
    path = write_video(frames, tmp_path / f"clip.{ext}", fps=8)
    assert path == tmp_path / f"clip.{ext}"
    v = read_video(path, len(frames), width=W, height=H)
    assert v.frames.shape == frames.shape and v.total_frames == len(frames)
    assert v.fps == pytest.approx(8, rel=0.1)  # GIF stores delays in 1/100 s
    assert float((v.frames - frames).abs().mean()) < tolerance


def test_gif_keeps_identical_frames(tmp_path):
    frames = texture_clip(1).repeat(5, 1, 1, 1)
    v = read_video(write_video(frames, tmp_path / "still.gif"), 5, width=W, height=H)
    assert v.total_frames == 5


def test_write_accepts_numpy_and_pil(tmp_path):
    frames = texture_clip(3)
    write_video(frames.numpy(), tmp_path / "np.mp4")
    pil = [Image.fromarray((f.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for f in frames]
    v = read_video(write_video(pil, tmp_path / "pil.gif"), 3, width=W, height=H)
    assert float((v.frames - frames).abs().mean()) < 0.02
    assert read_video(tmp_path / "np.mp4", 3, width=W, height=H).total_frames == 3


def test_odd_sizes_are_padded_for_mp4(tmp_path):
    path = write_video(texture_clip(2, w=47, h=33), tmp_path / "odd.mp4")
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (48, 34)


def test_folder_of_frames_natural_order(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    numbers = [1, 2, 3, 10, 11, 20]
    for rank, number in enumerate(numbers):
        value = (rank + 1) * 12
        ext = "png" if number % 2 else "JPG"
        Image.new("RGB", (W, H), (value, value, value)).save(folder / f"frame{number}.{ext}")
    (folder / "notes.txt").write_text("not a frame")
    v = read_video(folder, len(numbers), width=W, height=H)
    assert frame_indices(v.frames) == list(range(len(numbers)))  # frame2 before frame10
    assert (v.total_frames, v.stride, v.fps) == (6, 1, video_mod.DEFAULT_FPS)
    v = read_video(folder, 3, short_side=64)
    assert v.stride == 2 and v.size == working_size(W, H, short_side=64)
    assert frame_indices(v.frames) == [0, 2, 4]


def test_side_by_side(tmp_path):
    edit = torch.zeros(3, 3, 32, 48)
    edit[:, 2] = 1.0  # blue
    source = torch.zeros(3, 3, 64, 96)
    source[:, 0] = 1.0  # red, twice the edit's height: resized to 32x48
    path = write_video(edit, tmp_path / "sbs.mp4", side_by_side=source)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (96, 32)
    v = read_video(path, 3, width=96, height=32)
    assert float(v.frames[:, 0, :, 4:44].mean()) > 0.9 and float(v.frames[:, 2, :, 4:44].mean()) < 0.1
    assert float(v.frames[:, 2, :, 52:92].mean()) > 0.9 and float(v.frames[:, 0, :, 52:92].mean()) < 0.1
    raises("side_by_side|2 frames|3", write_video, edit, tmp_path / "bad.mp4", side_by_side=source[:2])


# --------------------------------------------------------------------------------------------- atomic writes


def test_write_creates_parent_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "new" / "deeper" / "out.mp4"
    assert write_video(texture_clip(2), path) == path
    assert os.listdir(path.parent) == ["out.mp4"]
    write_video(texture_clip(2), path)  # overwriting is fine
    assert os.listdir(path.parent) == ["out.mp4"]


def test_unwritable_location(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a regular file, not a folder")
    target = blocker / "out.mp4"
    raises(f"cannot write|{target}|not a folder", write_video, texture_clip(2), target)
    assert os.listdir(tmp_path) == ["file.txt"]


def test_output_file_mode_follows_umask(tmp_path):
    umask = os.umask(0o022)
    try:
        path = write_video(texture_clip(2), tmp_path / "out.gif")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("ext", ["mp4", "gif"])
def test_failed_write_leaves_no_partial_output(tmp_path, monkeypatch, ext):
    path = write_video(level_clip(2), tmp_path / f"out.{ext}")
    before = path.read_bytes()
    real_writer = video_mod._WRITERS[f".{ext}"]

    def failing_writer(frames, tmp, fps):
        real_writer(frames[:1], tmp, fps)  # something is on disk when it fails
        raise OSError(28, "No space left on device")

    monkeypatch.setitem(video_mod._WRITERS, f".{ext}", failing_writer)
    raises(f"cannot write|{path}|no space left", write_video, texture_clip(2), path)
    assert os.listdir(tmp_path) == [path.name] and path.read_bytes() == before  # old file untouched
    raises("cannot write", write_video, texture_clip(2), tmp_path / f"never.{ext}")
    assert os.listdir(tmp_path) == [path.name]  # and no new partial file


@pytest.mark.parametrize(
    "frames, words",
    [
        (torch.rand(2, 4, 8, 8), "shape"),
        (torch.rand(3, 8, 8), "shape"),
        (torch.rand(0, 3, 8, 8), "shape"),
        ([], "shape"),
        ([np.zeros((3, 8, 8)), np.zeros((3, 4, 4))], "list of PIL images"),
    ],
)
def test_write_rejects_bad_frames(tmp_path, frames, words):
    raises(words, write_video, frames, tmp_path / "x.mp4")
    assert os.listdir(tmp_path) == []


def test_write_rejects_unknown_extension_and_bad_fps(tmp_path):
    raises(".avi|.mp4|.gif", write_video, texture_clip(2), tmp_path / "x.avi")
    raises("fps", write_video, texture_clip(2), tmp_path / "x.mp4", fps=0)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    raises(f"no such file|{tmp_path / 'nope.mp4'}", read_video, tmp_path / "nope.mp4")


def test_empty_file(tmp_path):
    (tmp_path / "empty.mp4").touch()
    raises("empty file|empty.mp4", read_video, tmp_path / "empty.mp4")


@pytest.mark.parametrize("name", ["notes.txt", "notes.mp4", "notes.nfo"])
def test_text_file_is_not_a_video(tmp_path, name):
    (tmp_path / name).write_text("this is a text file, not a video\n" * 20)
    raises(f"not a readable video|{name}", read_video, tmp_path / name)


def test_audio_only_file(tmp_path):
    with wave.open(str(tmp_path / "tone.wav"), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(b"\0\0" * 800)
    raises("no video stream|tone.wav", read_video, tmp_path / "tone.wav")


def test_truncated_video(tmp_path, clip_mp4):
    data = open(clip_mp4, "rb").read()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    raises("cut.mp4", read_video, tmp_path / "cut.mp4", 4)


def test_folder_without_images(tmp_path):
    (tmp_path / "readme.txt").write_text("no frames here")
    raises(f"no images|{tmp_path}", read_video, tmp_path)


def test_unreadable_frame_in_folder(tmp_path):
    for i in range(3):
        Image.new("RGB", (W, H)).save(tmp_path / f"{i}.png")
    (tmp_path / "1.png").write_bytes(b"not really a png")
    raises("unreadable frame|1.png", read_video, tmp_path, 3)


@pytest.mark.parametrize("num_frames", [0, -3])
def test_bad_num_frames(clip_mp4, num_frames):
    raises(f"frames|{num_frames}", read_video, clip_mp4, num_frames)


@pytest.mark.parametrize("stride", [0, -1])
def test_bad_stride(clip_mp4, stride):
    raises(f"stride|{stride}", read_video, clip_mp4, 4, stride=stride)


@pytest.mark.parametrize("num_frames, stride, used", [(21, None, 1), (8, 3, 3)])
def test_not_enough_frames(clip_mp4, num_frames, stride, used):
    raises(f"{NUM} frames|stride {used}|--frames|--stride", read_video, clip_mp4, num_frames, stride=stride)


def test_not_enough_frames_in_folder(tmp_path):
    for i in range(3):
        Image.new("RGB", (W, H)).save(tmp_path / f"{i}.png")
    raises("3 frames|stride 2|--frames|--stride", read_video, tmp_path, 3, stride=2)


def test_bad_size_rejected_before_decoding(clip_mp4):
    raises("multiple of 8", read_video, clip_mp4, 4, width=100)


# --------------------------------------------------------------------------------------------- shipped sample


def test_shipped_sample_clip():
    with importlib.resources.as_file(importlib.resources.files("flatten_video") / "assets" / "sample.mp4") as path:
        assert path.is_file() and path.stat().st_size < 2 * 1024 * 1024
        v = read_video(path, 8, short_side=256)
    assert v.total_frames >= 32 and v.stride == v.total_frames // 8
    w, h = v.size
    assert w > h and v.frames.shape == (8, 3, h, w)
    assert 0.1 < float(v.frames.mean()) < 0.9
    assert float((v.frames[0] - v.frames[-1]).abs().mean()) > 0.02  # the camera moves


# --------------------------------------------------------------------------------------------- files as people have them


def rotated_clip(path, rotation: int = 90, frames: int = 4, w: int = 128, h: int = 64):
    """A clip stored w x h (a white band on the stored frame's left) with a display rotation, as
    phones write portrait video."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.set_display_rotation(rotation)
        for _ in range(frames):
            array = np.zeros((h, w, 3), np.uint8)
            array[:, : w // 4] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.mark.parametrize("rotation, band", [(90, "bottom"), (-90, "top"), (180, "right")])
def test_a_rotated_phone_clip_is_read_upright(tmp_path, rotation, band):
    """The display rotation is applied (PyAV's counterclockwise degrees, as players show it), so
    the size, the flow and the output follow the upright frames."""
    clip = read_video(rotated_clip(tmp_path / "phone.mp4", rotation), 4, short_side=64, size_multiple=8)
    size = (128, 64) if rotation == 180 else (64, 128)
    assert clip.size == size
    luma = clip.frames[0].mean(0)
    sides = {"top": luma[:8].mean(), "bottom": luma[-8:].mean(), "left": luma[:, :8].mean(), "right": luma[:, -8:].mean()}
    assert sides[band] > 0.9 and min(sides.values()) < 0.1
    if rotation != 180:  # an explicit width keeps the upright aspect (no squashing): 64 wide, 128 high
        assert read_video(tmp_path / "phone.mp4", 4, width=64).size == (64, 128)


def test_frames_of_a_photo_folder_are_read_upright_by_their_exif_orientation(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for index in range(3):
        image = Image.new("RGB", (96, 64))
        exif = image.getexif()
        exif[0x0112] = 6  # "rotate 90 clockwise to show"
        image.save(folder / f"{index}.jpg", exif=exif)
    assert read_video(folder, 3, short_side=64, size_multiple=8).size == (64, 96)


def test_a_folder_of_frames_with_mixed_sizes_is_refused_naming_the_frame(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for index in range(4):
        Image.new("RGB", (33, 200) if index == 2 else (96, 64)).save(folder / f"{index:03d}.png")
    raises("002.png is 33x200|000.png, the first, is 96x64|one size", read_video, folder, 4)


def clip_with_audio(path, frames: int = 16, fps: int = 8, codec: str = "aac"):
    """A clip of ``frames`` frames with a 440 Hz tone as long as its video, in ``codec``."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        sound = container.add_stream(codec, rate=16000)
        sound.layout = "mono"
        for index in range(frames):
            container.mux(video.encode(av.VideoFrame.from_ndarray(np.full((64, 64, 3), index * 8, np.uint8), format="rgb24")))
        container.mux(video.encode())
        samples = (np.sin(np.arange(16000 * frames // fps) * 2 * np.pi * 440 / 16000) * 0.3).astype(np.float32)
        for start in range(0, len(samples), 1024):
            chunk = samples[start: start + 1024][None]
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, start
            container.mux(sound.encode(frame))
        container.mux(sound.encode())
    return path


def audio_seconds(path) -> float | None:
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        packets = [p for p in container.demux(stream) if p.pts is not None]
        return float((packets[-1].pts + packets[-1].duration - packets[0].pts) * stream.time_base)


def test_the_sources_audio_is_copied_for_the_span_the_frames_cover(tmp_path):
    source = clip_with_audio(tmp_path / "talk.mp4")
    clip = read_video(source, 8, stride=1, short_side=64, size_multiple=8)  # the first 8 of 16 frames: 1 s
    assert clip.audio == source
    written = write_video(clip.frames, tmp_path / "edit.mp4", fps=clip.fps, audio=clip.audio)
    # Not the source's 2 s: 1 s, give or take AAC's priming and its last packet (64 ms each here).
    assert 1.0 <= audio_seconds(written) <= 1.0 + 2 * 0.064 + 1e-6
    with av.open(str(source)) as original, av.open(str(written)) as copy:
        assert copy.streams.audio[0].codec_context.name == original.streams.audio[0].codec_context.name  # not re-encoded
    assert audio_seconds(write_video(clip.frames, tmp_path / "silent.mp4", fps=clip.fps)) is None
    assert read_video(tmp_path / "silent.mp4", 2).audio is None


def test_audio_an_mp4_cannot_hold_is_dropped_with_one_warning(tmp_path, caplog):
    source = clip_with_audio(tmp_path / "phone-call.mov", codec="pcm_mulaw")  # mov holds mu-law, mp4 does not
    clip = read_video(source, 4, stride=1, short_side=64, size_multiple=8)
    written = write_video(clip.frames, tmp_path / "edit.mp4", fps=clip.fps, audio=clip.audio)
    assert read_video(written, 4).frames.shape[0] == 4 and audio_seconds(written) is None
    assert [r.getMessage() for r in caplog.records if "audio was not kept" in r.getMessage()]
    assert not list(tmp_path.glob(".*tmp*"))


def test_a_gif_faster_than_gifs_can_play_is_written_at_50_fps_and_says_so(tmp_path, caplog):
    written = write_video(level_clip(4), tmp_path / "fast.gif", fps=100000)
    assert read_video(written, 4).fps == pytest.approx(50, abs=0.5)
    assert any("written at 50 fps, not 100000" in r.getMessage() for r in caplog.records)


def test_16_bit_greyscale_frames_keep_their_levels(tmp_path):
    """PIL opens a 16-bit greyscale PNG as I;16 and its RGB conversion clips at 255: a mid-grey
    ramp must stay a mid-grey ramp, in a frame folder and as PIL frames given to write_video."""
    ramp = np.linspace(0, 65535, 32 * 48).reshape(32, 48).astype(np.uint16)
    for index in range(2):
        Image.fromarray(ramp).save(tmp_path / f"{index}.png")
    assert Image.open(tmp_path / "0.png").mode.startswith("I")
    clip = read_video(tmp_path, 2, width=48, height=32)
    expected = torch.from_numpy((ramp / 257.0 + 0.5).astype(np.uint8) / 255.0).float()
    for channel in range(3):
        torch.testing.assert_close(clip.frames[0, channel], expected, atol=1e-6, rtol=0)
    out = write_video([Image.open(tmp_path / "0.png")] * 2, tmp_path / "grey.gif", fps=4)
    assert abs(float(read_video(out, 2, width=48, height=32).frames.mean()) - 0.5) < 0.02


@pytest.mark.parametrize("transfer, named", [(18, "HLG"), (16, "PQ"), (1, None)])
def test_an_hdr_clip_says_in_one_line_that_it_is_edited_as_sdr(tmp_path, caplog, transfer, named):
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p10le"
        stream.codec_context.color_trc = transfer
        for _ in range(2):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 128, np.uint8), format="rgb24")
            container.mux(stream.encode(frame.reformat(format="yuv420p10le")))
        container.mux(stream.encode())
    with caplog.at_level("INFO", logger="flatten_video"):
        clip = read_video(path, 2, short_side=64, size_multiple=8)
    assert abs(float(clip.frames.mean()) - 0.5) < 0.02  # 10-bit frames read at their levels
    said = [record.getMessage() for record in caplog.records if "HDR" in record.getMessage()]
    if named:
        assert len(said) == 1 and f"phone.mp4 is HDR ({named})" in said[0] and "SDR" in said[0]
    else:
        assert said == []
