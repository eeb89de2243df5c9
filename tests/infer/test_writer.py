"""Writing results: replacing earlier results in place, zarr/h5ad/parquet/csv outputs, the flag."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
import zarr
from annotation_checks import check_equal, reference
from scnym.infer import OnnxModel, annotate


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
    # no threshold, no flag column; the novelty score is written all the same
    assert list(pd.read_csv(csv, index_col=0).columns) == [
        "scNym", "scNym_confidence", "scNym_novelty",
    ]  # fmt: skip


def test_h5ad_output(query, onnx_model, tmp_path):
    store = tmp_path / "q.zarr"
    query.write_zarr(store)
    annotate(store, onnx_model, output=tmp_path / "r.h5ad", key_added="pred", progress=False)
    written = anndata.read_h5ad(tmp_path / "r.h5ad")
    check_equal(written, query, onnx_model, key="pred")
    assert "pred" not in anndata.read_zarr(store).obs


def test_unknown_threshold_flags_cells_above_it_in_novelty(query, onnx_model, tmp_path):
    # the fixture's model has the novelty score: the threshold is on that scale
    assert OnnxModel(onnx_model).has_novelty
    novelty = annotate(query.copy(), onnx_model, progress=False).columns["scNym_novelty"]
    threshold = float(np.median(novelty))  # flags about half of the cells
    store = tmp_path / "q.zarr"
    query.write_zarr(store)
    result = annotate(store, onnx_model, unknown_threshold=threshold, progress=False)
    obs = anndata.read_zarr(store).obs
    assert obs["scNym_unknown"].dtype == bool
    high = obs["scNym_novelty"].to_numpy() > threshold
    assert 0 < high.sum() < len(high)
    np.testing.assert_array_equal(obs["scNym_unknown"].to_numpy(), high)
    # the label stays the best reference type, flagged or not
    expected, classes = reference(query, onnx_model)
    labels = np.asarray(classes)[expected.predicted_class]
    np.testing.assert_array_equal(obs["scNym"].astype(str).to_numpy(), labels)
    assert result.record["unknown_threshold"] == threshold
    assert result.record["novelty_score"] is True
