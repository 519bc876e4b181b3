"""Hugging Face hub ids without waiting on a network that is not there.

Offline, diffusers and transformers retry every file of a model for tens of seconds and then
name a missing file as the reason. A model given by hub id is checked here first, in a few
milliseconds: when there is no network (or ``HF_HUB_OFFLINE=1``) and the model is not in the
cache, the user is told so in one line; when it is cached, the libraries are told to read only
the cache (``local_files_only``), so they do not retry.
"""

from __future__ import annotations

import functools
import os
import pathlib
import socket
import time
from urllib.parse import urlparse


class HubUnavailable(OSError):
    """A hub id cannot be had: no network and not in the cache."""


#: Suffixes of weight files: a name ending in one is a local file, never a hub id.
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def is_hub_id(name: str | os.PathLike) -> bool:
    """Whether ``name`` names a hub repository ('owner/name') rather than a local path."""
    text = str(name)
    return (not pathlib.Path(text).exists() and text.count("/") <= 1 and not text.startswith((".", "/", "~"))
            and not text.lower().endswith(WEIGHT_SUFFIXES))


def offline_requested() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def network_available(timeout: float = 2.0) -> bool:
    """Whether the hub's host answers on its port; the answer is kept a minute (a web server
    asks once per edit, and the network may come back)."""
    if offline_requested():
        return False
    return _reachable(int(time.monotonic() // 60), timeout)


@functools.lru_cache(maxsize=1)
def _reachable(minute: int, timeout: float) -> bool:
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout):
            return True
    except OSError:
        return False


def is_cached(repo_id: str, filename: str = "") -> bool:
    """Whether ``filename`` of ``repo_id`` (any of its files when "") is in the Hugging Face cache."""
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        if not filename:
            snapshots = pathlib.Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "snapshots"
            return snapshots.is_dir() and any(snapshots.iterdir())
        return isinstance(try_to_load_from_cache(repo_id, filename), str)
    except Exception:  # a malformed id: the loader reports it
        return False


def hub_kwargs(name: str | os.PathLike, filename: str, what: str) -> dict:
    """The loading keyword arguments for ``name`` (a hub id or a local path), checked first.

    Args:
        filename: a file every copy of such a model has (``model_index.json``, ``config.json``),
            looked up in the cache ("": any file).
        what: how the user knows it ("the model", "the canny ControlNet"), for the message.

    Returns:
        ``{"local_files_only": True}`` for a cached hub id with no network, else ``{}``.

    Raises:
        HubUnavailable: a hub id, no network, and not in the cache: one line saying what to do.
    """
    if not is_hub_id(name) or network_available():
        return {}
    if is_cached(str(name), filename):
        return {"local_files_only": True}
    reason = "HF_HUB_OFFLINE is set" if offline_requested() else "no network"
    raise HubUnavailable(
        f"{reason}: {what} {name} is not in the Hugging Face cache; download it once while online "
        f"({download_command()} {name}) or give a local folder"
    )


def download_command() -> str:
    """The download command of the installed huggingface_hub: ``hf download`` since 1.0, which
    dropped ``huggingface-cli``; the old name where only it is installed."""
    from importlib.metadata import entry_points

    scripts = {entry.name for entry in entry_points(group="console_scripts")}
    return "huggingface-cli download" if "huggingface-cli" in scripts and "hf" not in scripts else "hf download"
