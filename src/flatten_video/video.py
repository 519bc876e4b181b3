"""Video input/output for flatten-video.

Reading: :func:`read_video` takes a video file (anything PyAV/FFmpeg decodes: mp4, mov, webm, gif, ...) or a
folder of frame images, samples ``num_frames`` frames every ``stride`` frames and resizes them to a working size
(see :func:`working_size`) that Stable Diffusion can use (multiples of 64 by default). The result is a
:class:`Video` whose ``frames`` tensor has shape ``(F, 3, H, W)``, float32 in ``[0, 1]``.

Writing: :func:`write_video` writes ``(F, 3, H, W)`` frames to ``.mp4`` (H.264, yuv420p) or ``.gif``, optionally
with the source clip side by side, atomically (no partial file is ever left at the target path).

Every problem caused by user input (missing or broken files, impossible frame counts, bad sizes, unwritable
output) raises :class:`VideoError` with a one-line message, so a command-line front end can print it as is.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import os
import pathlib
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator, Sequence

import av
import numpy as np
import torch
from PIL import Image, ImageOps

from .files import atomic_write
from .validation import check_multiple_of_8

logger = logging.getLogger(__name__)

__all__ = ["IMAGE_EXTENSIONS", "Video", "VideoError", "read_video", "working_size", "write_video"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# For sources without timing (a folder of frames): the rate write_video uses by default.
DEFAULT_FPS = 8.0
_RESAMPLE = Image.Resampling.LANCZOS
_TEXT_FORMATS = {"tty"}


class VideoError(ValueError):
    """Bad input to the video module (file, folder, sizes, frame counts or output path); one-line message."""


@dataclass
class Video:
    """A sampled, resized clip.

    frames: (F, 3, H, W) float32 in [0, 1].
    fps: frames per second of the sampled clip (source fps / stride).
    total_frames: number of frames in the source before sampling.
    stride: distance between sampled source frames.
    audio: the source file when it has an audio stream (its sound can go with the edit), else None.
    """

    frames: torch.Tensor
    fps: float
    total_frames: int
    stride: int
    audio: pathlib.Path | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(W, H) of the frames."""
        return int(self.frames.shape[-1]), int(self.frames.shape[-2])


# --------------------------------------------------------------------------------------------- sizes


def _round_to(x: float, multiple: int) -> int:
    # Round half up (not Python's banker's rounding) so e.g. 96 -> 128 with multiple 64 is predictable.
    return max(multiple, int(math.floor(x / multiple + 0.5)) * multiple)


def _check_explicit(name: str, value: int) -> int:
    try:
        check_multiple_of_8(name, int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value)
    except ValueError as error:
        raise VideoError(str(error)) from None
    return int(value)


def working_size(
    width: int,
    height: int,
    *,
    target_width: int | None = None,
    target_height: int | None = None,
    short_side: int = 512,
    multiple: int = 64,
) -> tuple[int, int]:
    """(W, H) to work at for a source of ``width`` x ``height`` pixels.

    Default keeps the aspect ratio: the short side becomes ``short_side`` and both sides are rounded to the
    nearest multiple of ``multiple`` (at least ``multiple``). If only one of target_width/target_height is given,
    the other follows the aspect ratio (rounded to ``multiple``). If both are given, they are used as they are.
    Explicit targets must be positive multiples of 8, else :class:`VideoError`.
    """
    if width <= 0 or height <= 0:
        raise VideoError(f"source size must be positive, got {width}x{height}")
    if multiple <= 0 or short_side <= 0:
        raise VideoError(f"short_side and multiple must be positive, got {short_side} and {multiple}")
    if target_width is not None:
        target_width = _check_explicit("width", target_width)
    if target_height is not None:
        target_height = _check_explicit("height", target_height)

    if target_width is not None and target_height is not None:
        return target_width, target_height
    if target_width is not None:
        return target_width, _round_to(height * target_width / width, multiple)
    if target_height is not None:
        return _round_to(width * target_height / height, multiple), target_height
    scale = short_side / min(width, height)
    return _round_to(width * scale, multiple), _round_to(height * scale, multiple)


def _center_crop(img: Image.Image, aspect: float) -> Image.Image:
    """Largest centered crop of ``img`` with width / height == ``aspect``."""
    w, h = img.size
    if w / h > aspect:
        cw, ch = max(1, round(h * aspect)), h
    else:
        cw, ch = w, max(1, round(w / aspect))
    left, top = (w - cw) // 2, (h - ch) // 2
    return img.crop((left, top, left + cw, top + ch))


def rgb_image(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB. 16-bit greyscale frames (PIL's I;16 and I modes, as exported
    by compositing and grading tools) are scaled from 0..65535: PIL's own conversion would clip
    them at 255, turning nearly every pixel white."""
    if img.mode.startswith("I"):
        levels = np.asarray(img, dtype=np.float64) / 257.0
        img = Image.fromarray(np.clip(levels + 0.5, 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


def _fit(img: Image.Image, size: tuple[int, int], crop: bool) -> np.ndarray:
    """Resize a PIL image to ``size`` (W, H); returns (H, W, 3) uint8."""
    img = rgb_image(img)
    if crop:
        img = _center_crop(img, size[0] / size[1])
    if img.size != size:
        img = img.resize(size, _RESAMPLE)
    return np.asarray(img)


# --------------------------------------------------------------------------------------------- reading


def _natural_key(name: str) -> list:
    # "frame2" < "frame10": compare digit runs as numbers.
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _check_sampling(total: int, num_frames: int, stride: int, source: str) -> None:
    needed = (num_frames - 1) * stride + 1
    if needed > total:
        raise VideoError(
            f"{source} has {total} frames, but {num_frames} frames with stride {stride} need {needed}; "
            f"use fewer --frames or a smaller --stride"
        )


def _resolve_stride(total: int, num_frames: int, stride: int | None) -> int:
    return max(1, total // num_frames) if stride is None else stride


def _list_images(folder: pathlib.Path) -> list[pathlib.Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda p: _natural_key(p.name))


def _read_folder(folder, num_frames, stride, size_args, crop) -> Video:
    files = _list_images(folder)
    if not files:
        raise VideoError(f"no images ({'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}) in folder: {folder}")
    stride = _resolve_stride(len(files), num_frames, stride)
    _check_sampling(len(files), num_frames, stride, f"folder {folder}")
    frames, size, first = [], None, None
    for path in files[: (num_frames - 1) * stride + 1 : stride]:
        try:
            with Image.open(path) as opened:
                img = ImageOps.exif_transpose(opened)  # upright, as a phone's photo viewer shows it
                if first is None:
                    first = (path, img.size)
                elif img.size != first[1]:
                    raise VideoError(f"the frame {path.name} is {img.size[0]}x{img.size[1]} but {first[0].name}, the "
                                     f"first, is {first[1][0]}x{first[1][1]}: every frame of {folder} must have one size")
                size = size or working_size(*img.size, **size_args)
                frames.append(_fit(img, size, crop))
        except (OSError, Image.DecompressionBombError) as err:
            raise VideoError(f"unreadable frame: {path} ({err})") from None
    return Video(_to_tensor(frames), DEFAULT_FPS / stride, len(files), stride)


def _open(path: pathlib.Path):
    """Open a media file and return (container, first video stream)."""
    try:
        container = av.open(str(path))
    except av.FFmpegError as err:
        raise VideoError(f"not a readable video file: {path} ({err.strerror or err})") from None
    # FFmpeg's "tty" demuxer renders .txt/.nfo/... files as ANSI-art video; that is never what a user meant.
    if container.format.name in _TEXT_FORMATS or not container.streams.video:
        container.close()
        raise VideoError(f"not a readable video file: {path} (no video stream)")
    return container, container.streams.video[0]


#: FFmpeg's transfer characteristics of HDR video (AVColorTransferCharacteristic), as messages name them.
HDR_TRANSFERS = {16: "PQ", 18: "HLG"}


def _say_if_hdr(path: pathlib.Path, stream) -> None:
    """One line when the clip is HDR (a phone's HLG, a grade's PQ): its frames are read as 8-bit
    SDR RGB without tone mapping, and the edit is written SDR."""
    transfer = HDR_TRANSFERS.get(getattr(stream.codec_context, "color_trc", None))
    if transfer:
        logger.info("%s is HDR (%s): its frames are read as SDR without tone mapping and the edit is written SDR, "
                    "so its colours look flatter than in an HDR player", path.name, transfer)


def _probe(path: pathlib.Path) -> tuple[int, float, bool]:
    """(frame count, fps, whether it has audio) of a video file, saying in one line if it is HDR.
    The count comes from the container header, else from demuxing (reading packets is cheap;
    nothing is decoded)."""
    container, stream = _open(path)
    with container:
        _say_if_hdr(path, stream)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps, audio = (float(rate) if rate else DEFAULT_FPS), bool(container.streams.audio)
        if stream.frames:
            return int(stream.frames), fps, audio
        try:
            return sum(1 for packet in container.demux(stream) if packet.size), fps, audio
        except av.FFmpegError as err:
            raise VideoError(f"cannot read {path}: {err.strerror or err}") from None


def _decode(path: pathlib.Path) -> Iterator[av.VideoFrame]:
    """Decoded frames of the first video stream; FFmpeg errors become VideoError."""
    container, stream = _open(path)
    stream.thread_type = "AUTO"
    with container:
        index = 0
        try:
            for frame in container.decode(stream):
                yield frame
                index += 1
        except av.FFmpegError as err:
            raise VideoError(f"cannot decode frame {index} of {path}: {err.strerror or err}") from None


def upright(frame: av.VideoFrame) -> Image.Image:
    """A decoded frame as it is meant to be shown: phone clips are stored sideways with a display
    rotation (PyAV's ``frame.rotation``, degrees counterclockwise), which players apply."""
    img = frame.to_image()
    rotation = getattr(frame, "rotation", 0) or 0
    return img.rotate(rotation, expand=True) if rotation % 360 else img


def _read_file(path, num_frames, stride, size_args, crop) -> Video:
    total, fps, audio = _probe(path)
    stride = _resolve_stride(total, num_frames, stride)
    _check_sampling(total, num_frames, stride, str(path))

    frames, size, seen = [], None, 0
    decoder = _decode(path)
    try:
        for index, frame in enumerate(decoder):
            seen = index + 1
            if index % stride:
                continue
            img = upright(frame)
            size = size or working_size(*img.size, **size_args)
            frames.append(_fit(img, size, crop))
            if len(frames) == num_frames:
                break  # stop decoding after the last needed frame
    finally:
        decoder.close()
    if len(frames) < num_frames:
        # The header promised more frames than could be decoded.
        _check_sampling(seen, num_frames, stride, str(path))
    return Video(_to_tensor(frames), fps / stride, total, stride, audio=path if audio else None)


def _positive_int(what: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise VideoError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def read_video(
    path: str | os.PathLike,
    num_frames: int = 32,
    *,
    stride: int | None = None,
    width: int | None = None,
    height: int | None = None,
    crop: bool = False,
    short_side: int = 512,
    size_multiple: int = 64,
) -> Video:
    """Read ``num_frames`` frames of a video file or a folder of frames.

    ``path`` is a video file (mp4/mov/webm/gif/... via PyAV) or a folder of images (png/jpg/jpeg/webp/bmp,
    in natural filename order: frame2 before frame10). Frames 0, stride, 2*stride, ... are taken, with
    ``stride`` defaulting to max(1, total // num_frames). Each frame is resized to
    ``working_size(W, H, target_width=width, target_height=height, short_side=short_side, multiple=size_multiple)``; with ``crop=True``
    it is first center-cropped to the target aspect ratio (no distortion), otherwise resized directly (LANCZOS).

    Returns a :class:`Video` with frames (F, 3, H, W) float32 in [0, 1]. Raises :class:`VideoError` on bad input.
    """
    path = pathlib.Path(path)
    num_frames = _positive_int("number of frames", num_frames)
    stride = None if stride is None else _positive_int("stride", stride)
    size_args = dict(target_width=width, target_height=height, short_side=short_side, multiple=size_multiple)
    working_size(64, 64, **size_args)  # validate sizes before any decoding

    if path.is_dir():
        return _read_folder(path, num_frames, stride, size_args, crop)
    if not path.exists():
        raise VideoError(f"no such file: {path}")
    if not path.is_file():
        raise VideoError(f"not a regular file: {path}")
    if path.stat().st_size == 0:
        raise VideoError(f"empty file: {path}")
    return _read_file(path, num_frames, stride, size_args, crop)


# --------------------------------------------------------------------------------------------- writing


def _to_tensor(frames: Sequence[np.ndarray]) -> torch.Tensor:
    """List of (H, W, 3) uint8 -> (F, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def _to_uint8(frames, what: str) -> list[np.ndarray]:
    """(F, 3, H, W) float tensor/array in [0, 1] (uint8 arrays: 0..255) or a list of PIL images
    -> list of (H, W, 3) uint8."""
    if isinstance(frames, (list, tuple)) and frames and all(isinstance(f, Image.Image) for f in frames):
        sizes = {f.size for f in frames}
        if len(sizes) > 1:
            raise VideoError(f"{what}: all images must have the same size, got {sorted(sizes)}")
        return [np.asarray(rgb_image(f)) for f in frames]
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().to("cpu", torch.float32).numpy()
    try:
        array = frames if isinstance(frames, np.ndarray) else np.asarray(frames, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise VideoError(f"{what} must be a (F, 3, H, W) array in [0, 1] or a list of PIL images ({err})") from None
    if array.ndim != 4 or array.shape[1] != 3 or array.shape[0] == 0 or 0 in array.shape[2:]:
        raise VideoError(f"{what} must have shape (F, 3, H, W) with F >= 1, got {tuple(array.shape)}")
    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return list(np.ascontiguousarray(array.transpose(0, 2, 3, 1)))


def _side_by_side(frames: list[np.ndarray], source: list[np.ndarray]) -> list[np.ndarray]:
    if len(source) != len(frames):
        raise VideoError(f"side_by_side has {len(source)} frames but the edit has {len(frames)}")
    h = frames[0].shape[0]
    out = []
    for src, edit in zip(source, frames):
        if src.shape[0] != h:
            w = max(1, round(src.shape[1] * h / src.shape[0]))
            src = np.asarray(Image.fromarray(src).resize((w, h), _RESAMPLE))
        out.append(np.concatenate([src, edit], axis=1))
    return out


def _write_mp4(frames: list[np.ndarray], path: str, fps: float, audio: pathlib.Path | None = None) -> None:
    h, w = frames[0].shape[:2]
    pad_h, pad_w = h % 2, w % 2  # yuv420p needs even sizes
    with av.open(path, mode="w", format="mp4") as container, \
            (av.open(str(audio)) if audio is not None else contextlib.nullcontext()) as source:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w + pad_w, h + pad_h, "yuv420p"
        stream.options = {"crf": "18", "preset": "medium"}
        sound = container.add_stream_from_template(source.streams.audio[0]) if source is not None else None
        for array in frames:
            if pad_h or pad_w:
                array = np.pad(array, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())
        if source is not None:
            _copy_audio(source, sound, container, len(frames) / fps)


def _copy_audio(source, sound, container, seconds: float) -> None:
    """The source's first audio stream's packets of its first ``seconds``, remuxed as they are."""
    stream = source.streams.audio[0]
    start = stream.start_time or 0
    for packet in source.demux(stream):
        if packet.dts is None or packet.pts is None:
            continue  # the demuxer's flush packet
        if (packet.pts - start) * stream.time_base >= seconds:
            break
        packet.stream = sound
        container.mux(packet)


def _write_gif(frames: list[np.ndarray], path: str, fps: float) -> None:
    # Quantize each frame with PIL (adaptive palette: far better than FFmpeg's fixed rgb8 palette) but mux
    # with FFmpeg, because PIL's GIF writer merges identical consecutive frames and would change the count.
    h, w = frames[0].shape[:2]
    with av.open(path, mode="w", format="gif") as container:
        stream = container.add_stream("gif", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "pal8"
        for array in frames:
            img = Image.fromarray(array).quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
            rgb = np.zeros((256, 3), np.uint8)
            colors = np.asarray(img.getpalette(), np.uint8).reshape(-1, 3)[:256]
            rgb[: len(colors)] = colors
            argb = np.concatenate([np.full((256, 1), 255, np.uint8), rgb], axis=1)
            frame = av.VideoFrame.from_ndarray((np.asarray(img), argb), format="pal8")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


_WRITERS = {".mp4": _write_mp4, ".gif": _write_gif}
#: The fastest a GIF plays as written: a delay of 2/100 s (browsers and viewers slow shorter ones to 1/10 s).
GIF_MAX_FPS = 50


def write_video(
    frames,
    path: str | os.PathLike,
    *,
    fps: float = 8.0,
    side_by_side: torch.Tensor | None = None,
    audio: str | os.PathLike | None = None,
) -> pathlib.Path:
    """Write frames to ``path`` (.mp4: H.264 yuv420p, odd sizes padded to even; .gif) and return the path.

    frames: (F, 3, H, W) float in [0, 1] (tensor or numpy array) or a list of PIL images.
    side_by_side: optional source frames (F, 3, H', W') shown on the left (resized to height H if needed),
    giving ``source | edit`` frames of width W' + W.
    audio: a file whose first audio stream goes with the frames (.mp4 only), copied without
    re-encoding for the F / fps seconds they last; where the mp4 cannot hold that codec, the video is
    written without it, with a one-line warning.

    The file is written to a temporary file in the same folder and then moved onto ``path``, so a failure never
    leaves a partial output. The parent folder is created if missing. Raises :class:`VideoError` on bad frames,
    an unsupported extension or an unwritable location.
    """
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    if suffix not in _WRITERS:
        raise VideoError(f"unsupported output format {path.suffix or '(none)'!r} for {path}; use .mp4 or .gif")
    if isinstance(fps, bool) or not (isinstance(fps, numbers.Real) and math.isfinite(fps) and fps > 0):
        raise VideoError(f"fps must be a positive number, got {fps!r}")
    arrays = _to_uint8(frames, "frames")
    if len({a.shape for a in arrays}) > 1:
        raise VideoError("frames: all frames must have the same size")
    if side_by_side is not None:
        arrays = _side_by_side(arrays, _to_uint8(side_by_side, "side_by_side"))

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise VideoError(f"cannot write {path}: a parent of it is a file, not a folder") from None
    except OSError as err:
        raise VideoError(f"cannot write {path}: {err.strerror or err}") from None
    if audio is not None and suffix != ".mp4":
        raise VideoError(f"{path.suffix} files hold no audio")
    if suffix == ".gif" and fps > GIF_MAX_FPS:
        logger.warning("%s is written at %d fps, not %g: GIF frame delays are hundredths of a second, and players "
                       "show delays under 2/100 s as 1/10 s", path.name, GIF_MAX_FPS, fps)
        fps = GIF_MAX_FPS
    dropped = None
    try:
        if audio is not None:
            try:
                with atomic_write(path, suffix) as tmp:
                    _write_mp4(arrays, str(tmp), float(fps), pathlib.Path(audio))
            except (av.FFmpegError, ValueError) as err:  # a codec the mp4 muxer cannot hold without re-encoding
                dropped = err
        if audio is None or dropped is not None:
            with atomic_write(path, suffix) as tmp:  # the suffix lets the muxer pick the format
                _WRITERS[suffix](arrays, str(tmp), float(fps))
    except (OSError, av.FFmpegError) as err:
        raise VideoError(f"cannot write {path}: {getattr(err, 'strerror', None) or err}") from None
    if dropped is not None:
        logger.warning("the source's audio was not kept in %s: an mp4 cannot hold it without re-encoding (%s)",
                       path.name, " ".join(str(dropped).split()))
    return path
