"""Atomic file writes: a reader, or a crash, never sees a half-written output."""

from __future__ import annotations

import contextlib
import os
import pathlib
import uuid


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path beside ``path``; when the block ends without error, it replaces
    ``path`` in one step, and in any case no temporary file is left.

    Args:
        suffix: ending of the temporary name, for writers that pick a format from it (".mp4").
    """
    path = pathlib.Path(path)
    # Beside the target, so the final rename stays on one filesystem; not mkstemp, whose 0600
    # mode would stick to the output.
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
