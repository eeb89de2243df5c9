"""Locations and local writes: fsspec URLs told from paths, atomic writes."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from scnym.infer.fileio import is_url, write_atomically


@pytest.mark.parametrize(
    "location",
    ["s3://bucket/x.zarr", "abfs://container/x.zarr", "memory://x.h5ad",
     "https://example.org/x.h5ad", "gs://b/x.zarr", "file:///tmp/x.zarr"],
)  # fmt: skip
def test_urls(location):
    assert is_url(location)


@pytest.mark.parametrize(
    "location",
    ["/tmp/x.zarr", "x.zarr", "C:\\data\\x.zarr", "C:/data/x.zarr", "./s3/x.zarr",
     Path("/tmp/x.zarr"), ""],
)  # fmt: skip
def test_local_paths(location):
    assert not is_url(location)


def test_write_atomically_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "new" / "record.json"
    assert write_atomically(path, "first") == path  # the folder is created
    write_atomically(path, b"second", mode=0o600)
    assert path.read_bytes() == b"second"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["record.json"]
