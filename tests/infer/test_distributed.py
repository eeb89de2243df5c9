"""Blocks classified on a local Dask cluster: the same results as in one process."""

from __future__ import annotations

import anndata
import numpy as np
import pytest
from scnym.infer import annotate


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
