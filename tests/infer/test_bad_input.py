"""Nothing wrong passes silently: every cell is checked, damaged stores and empty cells are named."""

from __future__ import annotations

import os
import shutil

import anndata
import numpy as np
import pytest
import scnym.infer.store as store_module
from annotation_checks import tree_digest
from scipy import sparse
from scnym.infer import annotate
from scnym.infer.memory import predict_adata
from scnym.infer.partial import partial_folder
from scnym.infer.preprocessing import detect_input_kind
from synthetic import log1p_cpm, make_counts

#: A row outside the rows that planning samples (4 ranges of 500 rows in 3,000).
UNSAMPLED_ROW = 700


@pytest.fixture(scope="module")
def many_cells():
    """3,000 cells of the model's genes: more than the 2,000 rows planning samples."""
    return make_counts(n_cells=3000, n_genes=60, n_classes=3, seed=21)


def _with_value(adata: anndata.AnnData, value: float) -> anndata.AnnData:
    out = adata.copy()
    X = sparse.csr_matrix(out.X, dtype=np.float32)
    X.data[X.indptr[UNSAMPLED_ROW]] = value
    out.X = X
    return out


@pytest.mark.parametrize(
    ("value", "message"),
    [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"), (-3.0, "negative values"),
     (2.5, "non-integer values, in a store of raw counts")],
)  # fmt: skip
def test_a_bad_cell_outside_the_sample_stops_the_run_before_anything_is_written(
    many_cells, onnx_model, tmp_path, value, message
):
    store = tmp_path / "bad.zarr"
    _with_value(many_cells, value).write_zarr(store, chunks=(250, 60))
    before = tree_digest(store)
    with pytest.raises(ValueError, match=rf"cell {UNSAMPLED_ROW} \(row {UNSAMPLED_ROW}.*{message}"):
        annotate(store, onnx_model, batch_size=250, progress=False)
    assert tree_digest(store) == before
    assert not partial_folder(str(store), None).exists()  # nothing to resume from bad data
    with pytest.raises(ValueError, match=rf"cell {UNSAMPLED_ROW} .*{message}"):
        predict_adata(_with_value(many_cells, value), onnx_model)  # the same rule in memory


def test_log1p_values_above_the_cpm_scale_outside_the_sample_are_refused(
    many_cells, onnx_model, tmp_path
):
    logged = log1p_cpm(many_cells)
    X = sparse.csr_matrix(logged.X)
    X.data[X.indptr[UNSAMPLED_ROW]] = 20.0
    logged.X = X
    store = tmp_path / "log.zarr"
    logged.write_zarr(store, chunks=(250, 60))
    with pytest.raises(ValueError, match="values above log1p"):
        annotate(store, onnx_model, batch_size=250, progress=False)


def test_min_max_scaled_data_is_not_taken_for_log1p_cpm(many_cells):
    logged = log1p_cpm(many_cells).X
    scaled = logged / logged.max(axis=0, keepdims=True)
    with pytest.raises(ValueError, match="scaled"):
        detect_input_kind(scaled)
    assert detect_input_kind(logged) == "log1p_cpm"


def test_cells_without_counts_get_no_label_in_annotate_and_predict(query, onnx_model, tmp_path):
    X = sparse.csr_matrix(query.X, dtype=np.float32).tolil()
    X[[3, 17], :] = 0
    query.X = X.tocsr()
    query.X.eliminate_zeros()
    store = tmp_path / "q.zarr"
    query.write_zarr(store)
    result = annotate(store, onnx_model, progress=False)
    written = anndata.read_zarr(store)
    assert written.obs["scNym"].isna().to_numpy().nonzero()[0].tolist() == [3, 17]
    assert np.isnan(written.obs["scNym_confidence"].to_numpy()[[3, 17]]).all()
    assert np.isnan(written.obs["scNym_novelty"].to_numpy()[[3, 17]]).all()
    assert written.obs["scNym_unknown"].dtype == bool
    assert written.obs["scNym_unknown"].to_numpy()[[3, 17]].all()  # flagged: nothing to place
    assert not np.isnan(written.obs["scNym_novelty"].drop(query.obs_names[[3, 17]])).any()
    assert written.obs["scNym"].notna().sum() == query.n_obs - 2
    assert result.record["n_cells_without_counts"] == 2
    assert written.uns["scNym_annotate"]["n_cells_without_counts"] == 2
    in_memory = query.copy()
    predict_adata(in_memory, onnx_model)
    assert in_memory.obs["scNym"].isna().to_numpy().nonzero()[0].tolist() == [3, 17]
    np.testing.assert_array_equal(
        in_memory.obs["scNym"].astype(str), written.obs["scNym"].astype(str)
    )
    assert in_memory.obs["scNym_unknown"].dtype == bool
    np.testing.assert_array_equal(in_memory.obs["scNym_unknown"], written.obs["scNym_unknown"])
    assert np.isnan(in_memory.obs["scNym_novelty"].to_numpy()[[3, 17]]).all()


def _chunk_files(array_folder):
    return sorted(p for p in array_folder.rglob("*") if p.is_file() and
                  p.name not in ("zarr.json", ".zarray", ".zattrs"))  # fmt: skip


def test_a_deleted_indices_chunk_is_refused_a_missing_data_chunk_reported(
    many_cells, onnx_model, tmp_path, caplog
):
    store = tmp_path / "damaged.zarr"
    many_cells.write_zarr(store, chunks=(250, 60))
    os.remove(_chunk_files(store / "X" / "indices")[1])
    before = tree_digest(store)
    with pytest.raises(ValueError, match=r"X/indices lacks 1 of its \d+ chunks.*damaged"):
        annotate(store, onnx_model, progress=False)
    assert tree_digest(store) == before
    # a data chunk of stored zeros is valid and cannot be told from a deleted one: reported
    other = tmp_path / "zeros.zarr"
    many_cells.write_zarr(other, chunks=(250, 60))
    os.remove(_chunk_files(other / "X" / "data")[1])
    with caplog.at_level("WARNING", logger="scnym.infer.store"):
        annotate(other, onnx_model, output=tmp_path / "out.csv", progress=False)
    assert "X/data lacks 1 of its" in caplog.text and "stored zeros, or deleted" in caplog.text


def test_a_store_the_process_cannot_write_is_opened_read_only(
    query, onnx_model, tmp_path, monkeypatch
):
    store = tmp_path / "q.zarr"
    query.write_zarr(store)
    monkeypatch.setattr(store_module.os, "access", lambda path, mode: False)
    reader = store_module.open_store(store)
    assert reader.writable is False
    reader.close()
    with pytest.raises(ValueError, match="read-only: pass --output"):
        annotate(store, onnx_model, progress=False)
    assert not partial_folder(str(store), None).exists()
    shutil.rmtree(store)
