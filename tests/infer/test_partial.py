"""Partial results: the run lock, resuming after a kill or a stop, refusing another run's blocks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import anndata
import numpy as np
import pytest
from annotation_checks import check_equal, tree_digest, write_store
from scnym.infer import annotate
from scnym.infer.partial import PartialResults, partial_folder


def test_concurrent_run_is_refused(query, onnx_model, tmp_path):
    store = write_store(query, tmp_path)
    folder = partial_folder(str(store), None)
    folder.mkdir()
    (folder / "lock").write_text(str(os.getppid()))  # a live process holds it
    with pytest.raises(RuntimeError, match="Another annotation run"):
        annotate(store, onnx_model, progress=False)


KILL_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import scnym.infer.compute as ann
    calls = {"n": 0}
    original = ann.classify_block
    def classify_block(*args, **kwargs):
        if calls["n"] == int(sys.argv[3]):
            os._exit(9)  # killed between blocks, as by SIGKILL
        calls["n"] += 1
        return original(*args, **kwargs)
    ann.classify_block = classify_block
    from scnym.infer import annotate
    annotate(sys.argv[1], sys.argv[2], batch_size=40, progress=False)
    """
)


def test_resume_after_a_killed_run_gives_identical_results(
    query, onnx_model, tmp_path, monkeypatch
):
    clean = tmp_path / "clean.zarr"
    query.write_zarr(clean, chunks=(40, query.n_vars))
    annotate(clean, onnx_model, batch_size=40, progress=False)

    store = tmp_path / "killed.zarr"
    query.write_zarr(store, chunks=(40, query.n_vars))
    before = tree_digest(store)
    done = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(store), str(onnx_model), "3"], check=False
    )
    assert done.returncode == 9
    assert tree_digest(store) == before  # nothing written into the store yet
    anndata.read_zarr(store)  # and it still reads
    folder = partial_folder(str(store), None)
    saved = len(list(folder.glob("block_*.npz")))
    assert saved in (2, 3)  # killed in block 4, while block 3 may still be being saved
    with pytest.raises(RuntimeError, match="--resume"):
        annotate(store, onnx_model, batch_size=40, progress=False)

    import scnym.infer.compute as ann

    calls = []
    original = ann.classify_block
    monkeypatch.setattr(ann, "classify_block", lambda *a, **k: calls.append(1) or original(*a, **k))
    annotate(store, onnx_model, batch_size=40, resume=True, progress=False)
    assert len(calls) == 6 - saved  # 6 blocks of 40 rows (230 cells): only the missing ran
    a, b = anndata.read_zarr(clean), anndata.read_zarr(store)
    np.testing.assert_array_equal(a.obs["scNym"], b.obs["scNym"])
    np.testing.assert_array_equal(a.obsm["X_scnym"], b.obsm["X_scnym"])
    assert not folder.exists()


def test_resume_after_the_results_were_moved_in(query, onnx_model, tmp_path, monkeypatch):
    store = tmp_path / "q.zarr"
    query.write_zarr(store)

    def stopped(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(PartialResults, "remove", stopped)  # killed just before cleaning up
    with pytest.raises(KeyboardInterrupt):
        annotate(store, onnx_model, progress=False)
    monkeypatch.undo()
    folder = partial_folder(str(store), None)
    assert not (folder / "embedding").exists()  # moved into the store, not copied
    annotate(store, onnx_model, resume=True, progress=False)
    check_equal(anndata.read_zarr(store), query, onnx_model)
    assert not folder.exists()


def test_resume_with_another_block_size_is_refused(query, onnx_model, tmp_path):
    store = write_store(query, tmp_path)
    folder = partial_folder(str(store), None)
    partial = PartialResults(folder, {"other": "run"})
    partial.open(resume=False)
    partial.save(0, {"predicted": np.zeros(1)})
    partial.release()
    with pytest.raises(RuntimeError, match="other settings"):
        annotate(store, onnx_model, resume=True, progress=False)
