"""The block layer: the kind of data, the gene coverage check and its errors, log1p(CPM) input."""

from __future__ import annotations

from types import SimpleNamespace

import anndata
import numpy as np
import pytest
from annotation_checks import reference, tree_digest, write_store
from scipy import sparse
from scnym.infer import OnnxModel, annotate
from scnym.infer.blocks import plan_blocks
from scnym.infer.partial import partial_folder
from scnym.infer.store import open_store


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


# ----------------------------------------------------------------------------
# Bad input: a clear error and the store unchanged
# ----------------------------------------------------------------------------


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
    store = write_store(adata, tmp_path)
    before = tree_digest(store)
    with pytest.raises(ValueError, match=message):
        annotate(store, onnx_model, progress=False)
    assert tree_digest(store) == before
    assert not partial_folder(str(store), None).exists()


def _coverage_error(adata, model, tmp_path) -> str:
    """The message of ``plan_blocks``'s refusal of ``adata`` (a store) for ``model``."""
    reader = open_store(write_store(adata, tmp_path), writable=False)
    try:
        with pytest.raises(ValueError, match="model genes") as refused:
            plan_blocks(reader, model)
    finally:
        reader.close()
    return str(refused.value)


def test_coverage_error_names_ensembl_ids_in_the_store(query, onnx_model, tmp_path):
    adata = query.copy()
    adata.var_names = [f"ENSG{i:011d}.{i % 3 + 1}" for i in range(adata.n_vars)]  # versioned
    message = _coverage_error(adata, OnnxModel(onnx_model), tmp_path)
    assert message.startswith("Only 0 of 60 model genes (0.0%)")
    assert (
        "the store names genes by Ensembl IDs but the model by gene symbols; pass --gene-key "
        "with a var column of gene symbols." in message
    )
    assert "Lower --min-gene-overlap" in message


def test_coverage_error_names_symbols_in_the_store_of_an_ensembl_model(query, tmp_path):
    # plan_blocks reads a model's genes and metadata only
    model = SimpleNamespace(
        genes=[f"ENSMUSG{i:011d}" for i in range(60)], metadata={"gene_id_type": "ensembl"}
    )
    message = _coverage_error(query, model, tmp_path)
    assert message.startswith("Only 0 of 60 model genes")
    assert (
        "the store names genes by gene symbols but the model by Ensembl IDs; pass --gene-key "
        "with a var column of Ensembl IDs." in message
    )
