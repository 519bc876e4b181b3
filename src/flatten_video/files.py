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
        follow_umask(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def follow_umask(path: str | os.PathLike) -> None:
    """Give ``path`` the mode a new file gets here (0666 less the umask): some writers
    (safetensors) create 0600 files, which a cache shared by a group could not be read from."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
