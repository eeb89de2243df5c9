"""Remote entries: download once into the cache, verify, refuse mismatches, fail clearly offline."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import fsspec
import pytest
from scnym.models import (
    ChecksumError,
    RegistryError,
    add_entry,
    cache_dir,
    entry_path,
    entry_status,
    fetch,
    load_registry,
    resolve,
    verify,
)


@pytest.fixture()
def memory_url():
    """A fresh ``memory://`` folder, removed afterwards."""
    fs = fsspec.filesystem("memory")
    folder = f"/scnym-test-{uuid.uuid4().hex}"
    yield f"memory://{folder}"
    if fs.exists(folder):
        fs.rm(folder, recursive=True)


def _add_remote(local_registry, url: str, sha256: str | None = None, name: str = "remote_model"):
    """Register the test model again as a remote entry served from ``url``."""
    entry = local_registry.get("test_model").to_dict()
    data = (local_registry.root / entry["file"]).read_bytes()
    entry.update(
        name=name,
        aliases=[],
        species="mouse",
        file=url,
        sha256=sha256 or hashlib.sha256(data).hexdigest(),
    )
    add_entry(entry)
    return data


def _serve(url: str, data: bytes) -> None:
    with fsspec.open(url, "wb") as fh:
        fh.write(data)


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SCNYM_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SCNYM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "scnym"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "scnym"


def test_a_remote_entry_is_downloaded_once_and_then_works_offline(local_registry, memory_url):
    url = f"{memory_url}/model.onnx"
    data = _add_remote(local_registry, url)
    _serve(url, data)
    registry = load_registry()
    entry = registry.get("remote_model")
    assert entry_status(entry, registry) == "remote"
    path = fetch("pretrained_mouse", progress=False)
    assert path == cache_dir() / "remote_model" / "model.onnx"
    assert path.read_bytes() == data
    assert entry_status(entry, registry) == "cached"
    assert [p.name for p in path.parent.iterdir()] == ["model.onnx"]  # no temporary left
    fsspec.filesystem("memory").rm(url)  # the server is gone: the cached copy serves
    assert resolve("remote_model", progress=False) == path
    assert verify("remote_model").ok


def test_a_download_with_another_checksum_is_refused_and_removed(local_registry, memory_url):
    url = f"{memory_url}/model.onnx"
    data = _add_remote(local_registry, url)
    _serve(url, data + b"corrupted")
    with pytest.raises(ChecksumError) as info:
        resolve("remote_model", progress=False)
    message = str(info.value)
    assert hashlib.sha256(data).hexdigest() in message  # expected
    assert hashlib.sha256(data + b"corrupted").hexdigest() in message  # actual
    folder = cache_dir() / "remote_model"
    assert not folder.exists() or not any(folder.iterdir())


def test_a_corrupted_cached_file_is_removed_by_verify_and_downloaded_again(
    local_registry, memory_url
):
    url = f"{memory_url}/model.onnx"
    data = _add_remote(local_registry, url)
    _serve(url, data)
    path = resolve("remote_model", progress=False)
    path.write_bytes(b"bit rot")
    result = verify("remote_model")
    assert not result.ok and result.removed and not path.exists()
    assert result.actual == hashlib.sha256(b"bit rot").hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"bit rot again")
    assert resolve("remote_model", progress=False).read_bytes() == data


@pytest.mark.parametrize(
    "url", ["memory://scnym-test-nowhere/model.onnx", "http://127.0.0.1:9/model.onnx"]
)
def test_an_unreachable_remote_entry_lists_the_local_models(local_registry, url, memory_url):
    # A second remote entry already in the cache counts as available offline.
    cached_url = f"{memory_url}/cached.onnx"
    _serve(cached_url, _add_remote(local_registry, cached_url, name="cached_model"))
    fetch("cached_model", progress=False)
    _add_remote(local_registry, url)
    with pytest.raises(RegistryError) as info:
        resolve("remote_model", progress=False)
    message = str(info.value)
    assert message.startswith(f"Cannot download 'remote_model' from {url}")
    if url.startswith("memory://"):
        assert "FileNotFoundError" in message and "offline" in message
    assert "Available locally: test_model (pretrained_human), test_atlas (atlas_human), " \
        "cached_model" in message  # fmt: skip
    registry = load_registry()
    assert str(entry_path(registry.get("remote_model"), registry)) in message
    assert not (cache_dir() / "remote_model").exists() or not any(
        (cache_dir() / "remote_model").iterdir()
    )


def test_verify_of_a_remote_entry_not_fetched_says_so(local_registry, memory_url):
    _add_remote(local_registry, f"{memory_url}/model.onnx")
    with pytest.raises(RegistryError, match="scnym models fetch remote_model"):
        verify("remote_model")
