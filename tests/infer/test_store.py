"""Opening stores: h5ad, layers and gene keys, CSC refused, read-only and remote (fsspec) stores."""

from __future__ import annotations

import stat

import anndata
import fsspec
import numpy as np
import pytest
import scnym.infer.store as store_module
from annotation_checks import check_equal, tree_digest, write_store
from scipy import sparse
from scnym.infer import annotate
from scnym.infer.store import open_store


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


def test_csc_matrix_is_refused_with_the_conversion(query, onnx_model, tmp_path):
    adata = query.copy()
    adata.X = sparse.csc_matrix(adata.X)
    store = write_store(adata, tmp_path)
    before = tree_digest(store)
    with pytest.raises(ValueError, match="CSC.*tocsr"):
        annotate(store, onnx_model, progress=False)
    assert tree_digest(store) == before


def test_duplicate_genes_and_missing_layer(query, onnx_model, tmp_path):
    adata = query.copy()
    names = list(adata.var_names)
    names[1] = names[0]
    adata.var_names = names
    store = write_store(adata, tmp_path)
    with pytest.raises(ValueError, match="duplicate gene names"):
        annotate(store, onnx_model, progress=False)
    with pytest.raises(ValueError, match="no layer 'counts'"):
        annotate(store, onnx_model, layer="counts", progress=False)
    with pytest.raises(FileNotFoundError):
        annotate(tmp_path / "none.zarr", onnx_model, progress=False)


def _set_read_only(path, read_only: bool) -> None:
    """Take away (or give back) the write permission of ``path`` and everything under it."""
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for item in paths:
        mode = item.stat().st_mode
        writable = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
        item.chmod(mode & ~writable if read_only else mode | stat.S_IWUSR)


@pytest.mark.parametrize("name", ["q.zarr", "q.h5ad"])
def test_read_only_store_opens_read_only_and_needs_output(
    query, onnx_model, tmp_path, monkeypatch, name
):
    store = tmp_path / name
    if name.endswith(".h5ad"):
        query.write_h5ad(store)
    else:
        query.write_zarr(store)
    original = store_module._open_root

    def refuse_writing(location, mode):
        # chmod does not stop root, and a local zarr group opens "r+" without writing:
        # the opener refusing "r+" is what open_store falls back from
        if mode == "r+":
            raise PermissionError(13, "Permission denied", location)
        return original(location, mode)

    monkeypatch.setattr(store_module, "_open_root", refuse_writing)
    _set_read_only(store, True)
    try:
        before = tree_digest(store)
        reader = open_store(store)
        assert reader.writable is False
        reader.close()
        with pytest.raises(ValueError, match="read-only: pass --output"):
            annotate(store, onnx_model, progress=False)
        out = tmp_path / "results.zarr"
        annotate(store, onnx_model, output=out, progress=False)
        check_equal(anndata.read_zarr(out), query, onnx_model)
        assert tree_digest(store) == before
    finally:
        _set_read_only(store, False)


def test_remote_h5ad_read_through_fsspec(query, onnx_model, tmp_path):
    local = tmp_path / "q.h5ad"
    query.write_h5ad(local)
    fs = fsspec.filesystem("memory")
    path = f"/scnym-test-h5ad/{tmp_path.name}/q.h5ad"
    fs.pipe(path, local.read_bytes())
    try:
        with pytest.raises(ValueError, match="pass --output"):
            annotate(f"memory://{path}", onnx_model, progress=False)
        remote = annotate(f"memory://{path}", onnx_model, output=tmp_path / "out.zarr",
                          progress=False)  # fmt: skip
        here = annotate(local, onnx_model, output=tmp_path / "local.zarr", progress=False)
        assert fs.cat(path) == local.read_bytes()  # the remote file is untouched
    finally:
        fs.rm(path)
    np.testing.assert_array_equal(remote.labels, here.labels)
    a, b = anndata.read_zarr(tmp_path / "out.zarr"), anndata.read_zarr(tmp_path / "local.zarr")
    np.testing.assert_array_equal(a.obs["scNym"].astype(str), b.obs["scNym"].astype(str))
    np.testing.assert_array_equal(a.obs_names, query.obs_names)
    check_equal(a, query, onnx_model)
