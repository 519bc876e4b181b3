"""A benchmark run's files: one JSON record (and video) per item, written atomically, so a rerun
skips finished items and the summary can be rebuilt from disk.

    OUT/items/<subset>/<video>/<edit>.json   settings, prompt, scores (table units and raw), timings
    OUT/items/<subset>/<video>/<edit>.mp4    the edited video
"""

from __future__ import annotations

import json
import math
import pathlib

from ..files import atomic_write
from .dataset import Item


def finite_or_none(scores: dict) -> dict:
    """Scores with NaN/inf as None, so the JSON we write is standard JSON (Sedit of a static edit is inf)."""
    return {k: v if v is None or math.isfinite(v) else None for k, v in scores.items()}


def write_text_atomic(path: pathlib.Path, text: str) -> None:
    """Write to a temporary file beside ``path`` and move it there: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: pathlib.Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2))


def item_path(out: pathlib.Path, item: Item) -> pathlib.Path:
    return out / "items" / item.subset / item.video / f"{item.edit}.json"


def read_record(path: pathlib.Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def is_finished(out: pathlib.Path, item: Item, settings: dict) -> bool:
    """Whether the item's JSON exists with these settings and this prompt."""
    record = read_record(item_path(out, item))
    return record is not None and record.get("settings") == settings and record.get("prompt") == item.prompt
