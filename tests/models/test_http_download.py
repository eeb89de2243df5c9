"""Registry downloads over plain HTTP, from a server the test starts: no aiohttp, no ranges."""

from __future__ import annotations

import functools
import hashlib
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from scnym.models import RegistryError, add_entry, cache_dir, resolve


@pytest.fixture()
def http_folder(tmp_path):
    """A folder served on 127.0.0.1 by the standard library's server (no range requests)."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _register(local_registry, url: str, data: bytes) -> None:
    entry = local_registry.get("test_model").to_dict()
    entry.update(name="remote_model", aliases=[], species="mouse", file=url,
                 sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))  # fmt: skip
    add_entry(entry)


def _model_bytes(local_registry) -> bytes:
    return (local_registry.root / local_registry.get("test_model").file).read_bytes()


def test_a_plain_http_download_needs_no_extra_client(local_registry, http_folder, monkeypatch):
    folder, base = http_folder
    data = _model_bytes(local_registry)
    (folder / "model.onnx").write_bytes(data)
    _register(local_registry, f"{base}/model.onnx", data)
    for client in ("aiohttp", "requests"):  # not dependencies of the base install
        monkeypatch.setitem(sys.modules, client, None)
    assert resolve("remote_model", progress=False).read_bytes() == data


def test_a_refusing_server_is_told_apart_from_being_offline(local_registry, http_folder):
    folder, base = http_folder
    _register(local_registry, f"{base}/gone.onnx", _model_bytes(local_registry))
    with pytest.raises(RegistryError, match=r"refused 'remote_model' \(HTTP 404"):
        resolve("remote_model", progress=False)


def test_a_server_sending_too_much_is_stopped_at_the_registered_size(local_registry, http_folder):
    folder, base = http_folder
    data = _model_bytes(local_registry)
    (folder / "model.onnx").write_bytes(data + b"\0" * (4 << 20))  # 4 MiB more than registered
    _register(local_registry, f"{base}/model.onnx", data)
    with pytest.raises(RegistryError, match=f"sent more than the {len(data):,} bytes"):
        resolve("remote_model", progress=False)
    leftovers = [p for p in cache_dir().rglob("*") if p.is_file()]
    assert leftovers == []  # neither the file nor its partial download is kept
