"""annotate on an AnnData in memory, the result object, registry names, raw counts, scanpy."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
from annotation_checks import check_equal
from scipy import sparse
from scnym.infer import AnnotationResult, annotate


def test_an_anndata_in_memory_is_annotated_like_a_store(query, onnx_model, tmp_path):
    store = tmp_path / "q.zarr"
    query.write_zarr(store)
    from_store = annotate(store, onnx_model, progress=False)
    in_memory = query.copy()
    result = annotate(in_memory, onnx_model, progress=False)
    assert isinstance(result, AnnotationResult) and result.written_to == "the AnnData"
    check_equal(in_memory, query, onnx_model)
    written = anndata.read_zarr(store)
    for column in ("scNym", "scNym_confidence", "scNym_novelty", "scNym_unknown"):
        np.testing.assert_array_equal(in_memory.obs[column], written.obs[column])
    assert in_memory.uns["scNym_annotate"]["written"]["obs"] == list(
        written.uns["scNym_annotate"]["written"]["obs"]
    )
    np.testing.assert_array_equal(result.labels, from_store.labels)
    assert result.embedding.shape == (query.n_obs, 256)
    assert result.probabilities.shape == (query.n_obs, 3)


def test_the_result_as_a_table_and_an_anndata(query, onnx_model, tmp_path):
    store = tmp_path / "q.zarr"
    query.write_zarr(store)
    result = annotate(store, onnx_model, progress=False)
    frame = result.to_df()
    assert list(frame.index) == list(query.obs_names)
    assert list(frame.columns) == ["scNym", "scNym_confidence", "scNym_novelty", "scNym_unknown"]
    assert frame["scNym_unknown"].dtype == bool and frame["scNym_novelty"].dtype == np.float32
    np.testing.assert_array_equal(result.novelty, frame["scNym_novelty"])
    np.testing.assert_array_equal(result.unknown, frame["scNym_unknown"])
    assert annotate(store, onnx_model, progress=False, unknown_threshold=None).unknown is None
    assert result.embedding is None  # a store's embedding stays out of core, in obsm
    in_memory = annotate(query.copy(), onnx_model, progress=False).to_adata()
    assert in_memory.obsm["X_scnym"].shape == (query.n_obs, 256)
    pd.testing.assert_frame_equal(in_memory.obs, frame)
    assert in_memory.uns["scNym_annotate"]["key_added"] == "scNym"


def test_an_anndata_to_an_output_is_left_untouched(query, onnx_model, tmp_path):
    before = query.copy()
    result = annotate(query, onnx_model, output=tmp_path / "out.zarr", progress=False)
    assert result.written_to == str(tmp_path / "out.zarr")
    assert list(query.obs.columns) == list(before.obs.columns)
    check_equal(anndata.read_zarr(tmp_path / "out.zarr"), before, onnx_model)


def test_a_registry_name_works_in_the_api(local_registry, query, tmp_path):
    store = tmp_path / "q.zarr"
    query.write_zarr(store)
    by_name = annotate(store, "test_model", output=tmp_path / "a.csv", progress=False)
    by_file = annotate(
        store, local_registry.root / "test_model.onnx", output=tmp_path / "b.csv", progress=False
    )
    np.testing.assert_array_equal(by_name.labels, by_file.labels)


def test_a_model_directory_gets_the_export_command(query, tmp_path):
    folder = tmp_path / "model_dir"
    folder.mkdir()
    with pytest.raises(ValueError, match=r"model directory.*scnym export"):
        annotate(query, folder, progress=False)


def test_raw_counts_are_read_with_layer_raw(query, onnx_model, tmp_path):
    scaled = query.copy()
    scaled.raw = query  # counts in .raw, as scanpy keeps them
    X = sparse.csr_matrix(scaled.X).toarray()
    scaled.X = (X - X.mean(axis=0)) / (X.std(axis=0) + 1)  # z-scored X: refused as it is
    with pytest.raises(ValueError, match="negative values"):
        annotate(scaled.copy(), onnx_model, progress=False)
    in_memory = scaled.copy()
    annotate(in_memory, onnx_model, layer="raw", progress=False)
    check_equal(in_memory, query, onnx_model)
    store = tmp_path / "scaled.zarr"
    scaled.write_zarr(store)
    annotate(store, onnx_model, layer="raw", progress=False)
    check_equal(anndata.read_zarr(store), query, onnx_model)


def test_label_categories_hold_only_the_labels_given(query, onnx_model):
    result = annotate(query, onnx_model, progress=False)
    categories = list(query.obs["scNym"].cat.categories)
    assert sorted(categories) == sorted(set(result.labels))


def test_scanpy_plots_read_the_results(query, onnx_model):
    sc = pytest.importorskip("scanpy")
    import matplotlib

    matplotlib.use("Agg")
    annotate(query, onnx_model, progress=False)
    query.obsm["X_umap"] = query.obsm["X_scnym"][:, :2]
    sc.pl.umap(query, color="scNym", show=False)
    sc.pl.dotplot(query, list(query.var_names[:5]), groupby="scNym", show=False)
    # the flag is a bool column and the score a float one: scanpy colours cells by either
    sc.pl.umap(query, color=["scNym_unknown", "scNym_novelty"], show=False)


def test_a_backed_anndata_is_read_as_its_store(query, onnx_model, tmp_path):
    path = tmp_path / "q.h5ad"
    query.write_h5ad(path)
    backed = anndata.read_h5ad(path, backed="r")
    result = annotate(backed, onnx_model, output=tmp_path / "out.csv", progress=False)
    backed.file.close()
    expected = annotate(query.copy(), onnx_model, progress=False)
    np.testing.assert_array_equal(result.labels, expected.labels)
