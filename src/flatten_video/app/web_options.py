"""The ``web`` command's options, importable without torch or Gradio (``flatten-video web --help``
answers at once); the server is :mod:`flatten_video.app.webui`."""

from __future__ import annotations

import argparse

from .settings import RuntimeSettings, add_arguments

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_OUTPUT_DIR = "flatten-video-outputs"
DEFAULT_MAX_UPLOAD_MB = 200
DEFAULT_MAX_FRAMES = 128


def add_web_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``web`` command's options: the runtime ones of the settings schema, then the server's."""
    add_arguments(parser, RuntimeSettings)
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default: {DEFAULT_HOST}, this machine only; 0.0.0.0 for the network)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    parser.add_argument("--share", action="store_true", help="also make a public gradio.live link (off by default; needs --auth)")
    parser.add_argument("--auth", action="append", metavar="USER:PASSWORD",
                        help="ask visitors for this user and password (repeat for several); needed to serve beyond this "
                             "machine (--share, or a --host other than loopback)")
    parser.add_argument("--auth-file", default=None, metavar="FILE", help="more USER:PASSWORD pairs, one a line")
    parser.add_argument("--no-auth", action="store_true",
                        help="serve beyond this machine without a password, on purpose")
    parser.add_argument("--open", action="store_true", help="open the page in a browser")
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help=f"where edited videos are kept (default: ./{DEFAULT_OUTPUT_DIR})")
    parser.add_argument("--cache-dir", default=None, help="where inversions are kept, so a new prompt on the same clip skips flow and inversion (default: OUTPUT_DIR/inversions)")
    parser.add_argument("--no-cache", action="store_true", help="keep no inversions")
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                        help=f"largest video a visitor may upload, in MB (default: {DEFAULT_MAX_UPLOAD_MB})")
    parser.add_argument("--max-frames", type=int, default=DEFAULT_MAX_FRAMES,
                        help=f"most frames one edit may ask for (default: {DEFAULT_MAX_FRAMES})")
