"""Generate src/flatten_video/assets/sample.mp4, the clip shipped with flatten-video.

The clip is a slow left-to-right camera pan with a slight zoom-in over "Chelsea the cat", a CC0 photograph
by Stefan van der Walt that ships inside the scikit-image wheel (skimage/data/chelsea.png). The PNG is read
straight from the installed package, so nothing is downloaded.

scikit-image is only needed to run this script; it is not a dependency of flatten-video:

    pip install scikit-image
    python scripts/make_sample_clip.py            # writes src/flatten_video/assets/sample.mp4
"""

from __future__ import annotations

import argparse
import importlib.resources
import pathlib

import numpy as np
import torch
from PIL import Image

from flatten_video.video import write_video

WIDTH, HEIGHT = 640, 384  # 5:3, non-square on purpose
NUM_FRAMES = 48
FPS = 12.0
# Crop windows (left, top, width) in source pixels at the first and last frame; height = width * 3 / 5.
START = (0.0, 36.0, 405.0)
END = (91.0, 66.0, 360.0)
DEFAULT_OUT = pathlib.Path(__file__).resolve().parents[1] / "src" / "flatten_video" / "assets" / "sample.mp4"


def load_chelsea() -> Image.Image:
    """Chelsea (451x300 RGB) from the scikit-image package files, without touching the network."""
    with importlib.resources.as_file(importlib.resources.files("skimage.data") / "chelsea.png") as png:
        if not png.is_file():
            raise SystemExit(f"{png} is not bundled with this scikit-image install")
        return Image.open(png).convert("RGB")


def render(image: Image.Image) -> torch.Tensor:
    """(NUM_FRAMES, 3, HEIGHT, WIDTH) float frames of the pan."""
    frames = []
    for i in range(NUM_FRAMES):
        t = i / (NUM_FRAMES - 1)
        t = t * t * (3 - 2 * t)  # ease in and out, like a hand-held pan that starts and stops gently
        left, top, width = (a + (b - a) * t for a, b in zip(START, END))
        height = width * HEIGHT / WIDTH
        # EXTENT takes a float box, so the window moves by sub-pixel steps and the motion does not judder.
        frame = image.transform(
            (WIDTH, HEIGHT), Image.Transform.EXTENT, (left, top, left + width, top + height), Image.Resampling.BICUBIC
        )
        frames.append(torch.from_numpy(np.asarray(frame).copy()))
    return torch.stack(frames).permute(0, 3, 1, 2).float() / 255.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT, help="output .mp4 (default: %(default)s)")
    args = parser.parse_args()
    path = write_video(render(load_chelsea()), args.out, fps=FPS)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB, {NUM_FRAMES} frames, {WIDTH}x{HEIGHT}, {FPS:g} fps)")


if __name__ == "__main__":
    main()
