"""The ``annotate`` verb end to end: a zarr store annotated in place equals the in-memory run."""

from __future__ import annotations

import anndata
import numpy as np
import pytest
import zarr
from annotation_checks import check_equal
from scnym.infer import OnnxModel, annotate
from scnym.infer.partial import partial_folder


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
    # the flag: novelty above the model's threshold (chosen on held-out reference cells)
    threshold = OnnxModel(onnx_model).unknown_threshold
    assert threshold == written.uns["scNym_annotate"]["unknown_threshold"]
    assert written.obs["scNym_unknown"].dtype == bool
    np.testing.assert_array_equal(
        written.obs["scNym_unknown"], written.obs["scNym_novelty"].to_numpy() > threshold
    )
    assert not partial_folder(str(store), None).exists()
    embedding = zarr.open_group(store, mode="r")["obsm"]["X_scnym"]
    assert embedding.metadata.zarr_format == fmt  # the store's own format
    assert embedding.chunks == (64, written.obsm["X_scnym"].shape[1])  # one chunk per block
