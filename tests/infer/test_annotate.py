"""Streaming annotation: stores, results equal to an in-memory run, errors, resume, Dask."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import zarr
from click.testing import CliRunner
from scipy import sparse
from scnym.cli import main
from scnym.infer import OnnxModel, annotate
from scnym.infer.model import resolve_providers
from scnym.infer.partial import PartialResults, partial_folder
from torchless import run_cli_without_torch


def reference(adata: anndata.AnnData, model_path: Path):
    """The same ONNX model run on the whole matrix in memory."""
    model = OnnxModel(model_path)
    X = sparse.csr_matrix(adata.X, dtype=np.float32)
    total = np.asarray(X.sum(axis=1)).ravel()
    index = pd.Index(adata.var_names).get_indexer(model.genes)
    dense = np.zeros((adata.n_obs, len(index)), dtype=np.float32)
    dense[:, index >= 0] = X[:, index[index >= 0]].toarray()
    return model.run(dense, total_counts=total), model.classes


def check_equal(written: anndata.AnnData, adata, model_path, key="scNym"):
    expected, classes = reference(adata, model_path)
    labels = np.asarray(classes)[expected.predicted_class]
    np.testing.assert_array_equal(written.obs[key].astype(str).to_numpy(), labels)
    np.testing.assert_allclose(
        written.obs[f"{key}_confidence"].to_numpy(), expected.probabilities.max(1), atol=1e-6
    )
    np.testing.assert_allclose(written.obsm["X_scnym"], expected.embedding, atol=1e-6)


def tree_digest(path: Path) -> str:
    """Hash of every file under ``path`` (names and bytes)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path.parent)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("fmt", [2, 3])
def test_zarr_store_in_place_equals_in_memory(query, onnx_model, tmp_path, fmt):
    store = tmp_path / "q.zarr"
    with anndata.settings.override(zarr_write_format=fmt):
        query.write_zarr(store, chunks=(64, query.n_vars))
    result = annotate(store, onnx_model, batch_size=64, progress=False)
    assert result.n_cells == query.n_obs
    assert result.coverage.n_found == 55 and result.coverage.n_model_genes == 60
    written = anndata.read_zarr(store)
    check_equal(written, query, onnx_model)
    assert (written.X != query.X).nnz == 0  # X untouched
    assert written.uns["scNym_annotate"]["gene_coverage"] == pytest.approx(55 / 60)
    assert "scNym_unknown" in written.obs  # the model's 0.9 threshold
    assert not partial_folder(str(store), None).exists()
    embedding = zarr.open_group(store, mode="r")["obsm"]["X_scnym"]
    assert embedding.metadata.zarr_format == fmt  # the store's own format
    assert embedding.chunks == (64, written.obsm["X_scnym"].shape[1])  # one chunk per block


@pytest.mark.parametrize("fmt", [2, 3])
def test_annotating_again_in_place_replaces_the_results(query, onnx_model, tmp_path, fmt):
    store = tmp_path / "q.zarr"
    with anndata.settings.override(zarr_write_format=fmt):
        query.write_zarr(store)
    annotate(store, onnx_model, batch_size=100, progress=False)
    annotate(store, onnx_model, batch_size=50, write_probabilities=True, progress=False)
    written = anndata.read_zarr(store)
    check_equal(written, query, onnx_model)
    expected, _ = reference(query, onnx_model)
    np.testing.assert_allclose(
        written.obsm["scNym_probabilities"], expected.probabilities, atol=1e-6
    )
    assert list(written.obs.columns).count("scNym") == 1


def test_h5ad_store_dense_matrix(query, onnx_model, tmp_path):
    dense = query.copy()
    dense.X = dense.X.toarray()
    store = tmp_path / "q.h5ad"
    dense.write_h5ad(store)
    annotate(store, onnx_model, batch_size=50, progress=False)
    check_equal(anndata.read_h5ad(store), query, onnx_model)


def test_layer_and_gene_key(query, onnx_model, tmp_path):
    adata = query.copy()
    adata.layers["counts"] = adata.X.copy()
    adata.X = sparse.csr_matrix(adata.X.shape, dtype=np.float32)
    adata.var["symbol"] = adata.var_names
    adata.var_names = [f"id{i}" for i in range(adata.n_vars)]
    store = tmp_path / "q.zarr"
    adata.write_zarr(store)
    annotate(store, onnx_model, layer="counts", gene_key="symbol", progress=False)
    check_equal(anndata.read_zarr(store), query, onnx_model)


def test_log1p_cpm_store_gives_the_same_answer(query, onnx_model, tmp_path):
    normed = query.copy()
    X = normed.X.toarray()
    normed.X = sparse.csr_matrix(np.log1p(X / X.sum(1, keepdims=True) * 1e6).astype(np.float32))
    store = tmp_path / "q.zarr"
    normed.write_zarr(store)
    annotate(store, onnx_model, progress=False)
    written = anndata.read_zarr(store)
    expected, classes = reference(query, onnx_model)
    np.testing.assert_allclose(written.obsm["X_scnym"], expected.embedding, atol=1e-4)
    np.testing.assert_array_equal(
        written.obs["scNym"].astype(str), np.asarray(classes)[expected.predicted_class]
    )


def test_log1p_cpm_model_gives_the_same_answer(query, onnx_model, tmp_path):
    from scnym.export import export_model

    log_model = tmp_path / "log.onnx"
    export_model(onnx_model.parent / "model", log_model, input_mode="log1p_cpm")
    for kind in ("counts", "log1p_cpm"):
        stored = query.copy()
        if kind == "log1p_cpm":
            X = stored.X.toarray()
            stored.X = sparse.csr_matrix(np.log1p(X / X.sum(1, keepdims=True) * 1e6))
        store, out = tmp_path / f"{kind}.zarr", tmp_path / f"{kind}_results.zarr"
        stored.write_zarr(store)
        annotate(store, log_model, output=out, batch_size=64, progress=False)
        written = anndata.read_zarr(out)
        expected, classes = reference(query, onnx_model)  # the counts-mode model
        np.testing.assert_allclose(written.obsm["X_scnym"], expected.embedding, atol=1e-4)
        np.testing.assert_array_equal(
            written.obs["scNym"].astype(str), np.asarray(classes)[expected.predicted_class]
        )


def test_memory_fsspec_store_to_output_files(query, onnx_model, tmp_path):
    import fsspec

    url = "memory://scnym-test/q.zarr"
    fs = fsspec.filesystem("memory")
    if fs.exists("/scnym-test"):
        fs.rm("/scnym-test", recursive=True)
    query.write_zarr(zarr.storage.FsspecStore.from_url(url, read_only=False))
    with pytest.raises(ValueError, match="pass --output"):
        annotate(url, onnx_model, progress=False)
    out = tmp_path / "results.zarr"
    annotate(url, onnx_model, output=out, progress=False, write_probabilities=True)
    written = anndata.read_zarr(out)
    check_equal(written, query, onnx_model)
    assert written.obsm["scNym_probabilities"].shape == (query.n_obs, 3)
    table = tmp_path / "results.parquet"
    annotate(url, onnx_model, output=table, progress=False)
    frame = pd.read_parquet(table)
    np.testing.assert_array_equal(frame["scNym"].astype(str), written.obs["scNym"].astype(str))
    csv = tmp_path / "results.csv"
    annotate(url, onnx_model, output=csv, progress=False, unknown_threshold=None)
    assert list(pd.read_csv(csv, index_col=0).columns) == ["scNym", "scNym_confidence"]


def test_h5ad_output(query, onnx_model, tmp_path):
    store = tmp_path / "q.zarr"
    query.write_zarr(store)
    annotate(store, onnx_model, output=tmp_path / "r.h5ad", key_added="pred", progress=False)
    written = anndata.read_h5ad(tmp_path / "r.h5ad")
    check_equal(written, query, onnx_model, key="pred")
    assert "pred" not in anndata.read_zarr(store).obs


def test_unknown_threshold_marks_low_confidence_cells(query, onnx_model, tmp_path):
    store = tmp_path / "q.zarr"
    query.write_zarr(store)
    annotate(store, onnx_model, unknown_threshold=0.99, progress=False)
    obs = anndata.read_zarr(store).obs
    low = obs["scNym_confidence"] < 0.99
    assert (obs.loc[low, "scNym_unknown"] == "Unknown").all()
    assert (obs.loc[~low, "scNym_unknown"].astype(str) == obs.loc[~low, "scNym"].astype(str)).all()


# ----------------------------------------------------------------------------
# Bad input: a clear error and the store unchanged
# ----------------------------------------------------------------------------


def _store(adata, tmp_path) -> Path:
    store = tmp_path / "bad.zarr"
    adata.write_zarr(store)
    return store


def test_csc_matrix_is_refused_with_the_conversion(query, onnx_model, tmp_path):
    adata = query.copy()
    adata.X = sparse.csc_matrix(adata.X)
    store = _store(adata, tmp_path)
    before = tree_digest(store)
    with pytest.raises(ValueError, match="CSC.*tocsr"):
        annotate(store, onnx_model, progress=False)
    assert tree_digest(store) == before


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda a: setattr(a, "X", a.X - 1.0), "negative values"),
        (lambda a: setattr(a, "X", a.X * 1.5 + 20), "not log"),
        (lambda a: setattr(a, "var_names", [f"ENSG{i:011d}" for i in range(a.n_vars)]), "Ensembl"),
        (lambda a: setattr(a, "var_names", [g.upper() for g in a.var_names]), "another species"),
    ],
)
def test_bad_data_errors_leave_the_store_unchanged(query, onnx_model, tmp_path, mutate, message):
    adata = query.copy()
    adata.X = adata.X.toarray()
    mutate(adata)
    store = _store(adata, tmp_path)
    before = tree_digest(store)
    with pytest.raises(ValueError, match=message):
        annotate(store, onnx_model, progress=False)
    assert tree_digest(store) == before
    assert not partial_folder(str(store), None).exists()


def test_duplicate_genes_and_missing_layer(query, onnx_model, tmp_path):
    adata = query.copy()
    names = list(adata.var_names)
    names[1] = names[0]
    adata.var_names = names
    store = _store(adata, tmp_path)
    with pytest.raises(ValueError, match="duplicate gene names"):
        annotate(store, onnx_model, progress=False)
    with pytest.raises(ValueError, match="no layer 'counts'"):
        annotate(store, onnx_model, layer="counts", progress=False)
    with pytest.raises(FileNotFoundError):
        annotate(tmp_path / "none.zarr", onnx_model, progress=False)


def test_cuda_without_provider_says_how_to_get_it():
    if "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers():
        pytest.skip("a CUDA provider is installed")
    with pytest.raises(ValueError, match="onnxruntime-gpu"):
        resolve_providers("cuda")
    assert resolve_providers("auto") == ["CPUExecutionProvider"]


def test_concurrent_run_is_refused(query, onnx_model, tmp_path):
    store = _store(query, tmp_path)
    folder = partial_folder(str(store), None)
    folder.mkdir()
    (folder / "lock").write_text(str(os.getppid()))  # a live process holds it
    with pytest.raises(RuntimeError, match="Another annotation run"):
        annotate(store, onnx_model, progress=False)


# ----------------------------------------------------------------------------
# Crash safety and resume
# ----------------------------------------------------------------------------

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
    store = _store(query, tmp_path)
    folder = partial_folder(str(store), None)
    partial = PartialResults(folder, {"other": "run"})
    partial.open(resume=False)
    partial.save(0, {"predicted": np.zeros(1)})
    partial.release()
    with pytest.raises(RuntimeError, match="other settings"):
        annotate(store, onnx_model, resume=True, progress=False)


# ----------------------------------------------------------------------------
# Dask and the torch-free CLI
# ----------------------------------------------------------------------------


def test_two_worker_local_cluster_equals_single_process(query, onnx_model, tmp_path):
    pytest.importorskip("dask.distributed")
    single, dist = tmp_path / "single.zarr", tmp_path / "dist.zarr"
    query.write_zarr(single, chunks=(50, query.n_vars))
    query.write_zarr(dist, chunks=(50, query.n_vars))
    annotate(single, onnx_model, batch_size=50, progress=False)
    annotate(dist, onnx_model, batch_size=50, workers=2, progress=False)
    a, b = anndata.read_zarr(single), anndata.read_zarr(dist)
    np.testing.assert_array_equal(a.obs["scNym"], b.obs["scNym"])
    np.testing.assert_array_equal(a.obs["scNym_confidence"], b.obs["scNym_confidence"])
    np.testing.assert_array_equal(a.obsm["X_scnym"], b.obsm["X_scnym"])


def test_cli_annotate_with_torch_blocked(query, onnx_model, tmp_path):
    store = tmp_path / "q.zarr"
    query.write_zarr(store)
    done = run_cli_without_torch("annotate", str(store), "--model", str(onnx_model), "--quiet")
    assert done.returncode == 0, done.stderr
    assert "Gene coverage: 55/60 model genes" in done.stdout
    check_equal(anndata.read_zarr(store), query, onnx_model)


def test_cli_annotate_reports_errors_in_one_line(query, onnx_model, tmp_path):
    adata = query.copy()
    adata.var_names = [f"ENSG{i:011d}" for i in range(adata.n_vars)]
    store = _store(adata, tmp_path)
    result = CliRunner().invoke(main, ["annotate", str(store), "--model", str(onnx_model)])
    assert result.exit_code == 1
    assert result.output.startswith("Error: Only 0 of 60 model genes")
