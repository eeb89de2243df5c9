"""Faults injected into the write phase: kills, a full disk, permissions lost mid-run.

After each, the store still reads with anndata and ``resume`` gives exactly the
results of an uninterrupted run.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import anndata
import numpy as np
import pytest
from scnym.infer import annotate
from scnym.infer.partial import PartialResults, partial_folder

#: Where the write phase is killed: (module attribute wrapped, calls let through first).
KILL_POINTS = {
    "after the record": ("scnym.infer.writer:write_elem", 1),
    "after one obs column": ("scnym.infer.writer:write_elem", 2),
    "before the embedding moves in": ("scnym.infer.writer:_place_array", 0),
    "before consolidating": ("scnym.infer.store:StoreReader.reconsolidate", 0),
    "before removing the partial results": ("scnym.infer.partial:PartialResults.remove", 0),
}

KILL_SCRIPT = textwrap.dedent(
    """
    import importlib, os, sys
    store, model, target, let_through = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    module_name, attribute = target.split(":")
    owner = importlib.import_module(module_name)
    *path, name = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    calls = {"n": 0}
    def killed(*args, **kwargs):
        if calls["n"] == let_through:
            os._exit(9)  # as by SIGKILL: no cleanup runs
        calls["n"] += 1
        return original(*args, **kwargs)
    setattr(owner, name, killed)
    from scnym.infer import annotate
    annotate(store, model, batch_size=40, progress=False)
    """
)


def _results(store: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    written = anndata.read_zarr(store)
    return (
        written.obs["scNym"].astype(str).to_numpy(),
        written.obs["scNym_confidence"].to_numpy(),
        np.asarray(written.obsm["X_scnym"]),
    )


@pytest.fixture()
def clean_results(query, onnx_model, tmp_path):
    store = tmp_path / "clean.zarr"
    query.write_zarr(store, chunks=(40, query.n_vars))
    annotate(store, onnx_model, batch_size=40, progress=False)
    return _results(store)


def _assert_same(store: Path, expected) -> None:
    for got, want in zip(_results(store), expected, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_kill_in_the_write_phase_leaves_a_readable_store_and_resume_completes_it(
    query, onnx_model, tmp_path, clean_results, point
):
    store = tmp_path / "killed.zarr"
    query.write_zarr(store, chunks=(40, query.n_vars))
    target, let_through = KILL_POINTS[point]
    done = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(store), str(onnx_model), target, str(let_through)],
        check=False,
    )
    assert done.returncode == 9
    anndata.read_zarr(store)  # readable whatever the point
    assert partial_folder(str(store), None).exists()
    annotate(store, onnx_model, batch_size=40, resume=True, progress=False)
    _assert_same(store, clean_results)
    assert not partial_folder(str(store), None).exists()


@pytest.fixture()
def small_disk(tmp_path):
    """A 4 MiB tmpfs (root and mount permitted), removed afterwards; skipped elsewhere."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_stops_the_run_and_resume_completes_it(
    query, onnx_model, small_disk, clean_results
):
    store = small_disk / "q.zarr"
    query.write_zarr(store, chunks=(40, query.n_vars))
    before = anndata.read_zarr(store)
    ballast = small_disk / "ballast"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    ballast.write_bytes(b"\0" * (free - 40 * 1024))  # about 40 KiB left: too little for the results
    with pytest.raises(OSError) as info:
        annotate(store, onnx_model, batch_size=40, progress=False)
    assert info.value.errno == errno.ENOSPC
    after = anndata.read_zarr(store)  # still reads, and holds what it held
    assert list(after.obs.columns) == list(before.obs.columns)
    ballast.unlink()
    annotate(store, onnx_model, batch_size=40, resume=True, progress=False)
    _assert_same(store, clean_results)


def test_permissions_lost_mid_run_stop_it_and_resume_completes_it(
    query, onnx_model, tmp_path, clean_results, monkeypatch
):
    store = tmp_path / "q.zarr"
    query.write_zarr(store, chunks=(40, query.n_vars))
    original = PartialResults.save

    def save(self, start, arrays):
        if start >= 120:  # the folder became unwritable after three blocks
            raise PermissionError(errno.EACCES, "Permission denied", str(self.folder))
        return original(self, start, arrays)

    monkeypatch.setattr(PartialResults, "save", save)
    with pytest.raises(PermissionError):
        annotate(store, onnx_model, batch_size=40, progress=False)
    monkeypatch.undo()
    anndata.read_zarr(store)
    folder = partial_folder(str(store), None)
    assert len(list(folder.glob("block_*.npz"))) == 3
    assert not (folder / "lock").exists()  # released: the resume is not taken for a live run
    annotate(store, onnx_model, batch_size=40, resume=True, progress=False)
    _assert_same(store, clean_results)
    shutil.rmtree(folder, ignore_errors=True)
