"""Helpers of the inference tests: the in-memory reference run, result checks, store digests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
from scipy import sparse
from scnym.infer import OnnxModel


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
    if expected.novelty is not None:  # the model has the score: written beside the label
        novelty = written.obs[f"{key}_novelty"].to_numpy()
        relative = np.abs(novelty - expected.novelty) / np.maximum(np.abs(expected.novelty), 1)
        assert relative.max(initial=0) <= 1e-5, relative.max()
    else:
        assert f"{key}_novelty" not in written.obs


def tree_digest(path: Path) -> str:
    """Hash of every file under ``path`` (names and bytes)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path.parent)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def write_store(adata, tmp_path) -> Path:
    """``adata`` written as the zarr store ``tmp_path/bad.zarr``."""
    store = tmp_path / "bad.zarr"
    adata.write_zarr(store)
    return store
