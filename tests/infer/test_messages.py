"""Messages name the real cause, and low coverage is visible."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy import sparse
from scnym.cli import main
from scnym.infer import annotate


def test_a_gene_subset_is_named_as_such(query, onnx_model):
    subset = query[:, :20].copy()  # e.g. a Seurat object holding its variable genes only
    with pytest.raises(ValueError, match=r"the data holds only 20 genes \(the model reads 60\)"):
        annotate(subset, onnx_model, progress=False)


def test_ensembl_versions_are_named(query, onnx_model):
    from scnym.infer.blocks import _likely_cause
    from scnym.infer.model import OnnxModel

    model = OnnxModel(onnx_model)
    model.metadata = {**model.metadata, "gene_id_type": "ensembl"}
    model.metadata["genes"] = [f"ENSG{i:011d}" for i in range(60)]
    store_genes = [f"ENSG{i:011d}.4" for i in range(60)]
    assert "version suffixes" in _likely_cause(pd.Index(store_genes), model, 0.5)


def test_a_refused_x_names_the_other_matrices(query, onnx_model, tmp_path):
    scaled = query.copy()
    scaled.layers["counts"] = query.X.copy()
    scaled.raw = query
    X = sparse.csr_matrix(query.X).toarray()
    scaled.X = X - X.mean(axis=0)
    with pytest.raises(ValueError, match=r"pass --layer with one of \['counts', 'raw'\]"):
        annotate(scaled.copy(), onnx_model, progress=False)
    store = tmp_path / "scaled.zarr"
    scaled.write_zarr(store)
    result = CliRunner().invoke(main, ["annotate", str(store), "--model", str(onnx_model)])
    assert result.exit_code == 1 and "pass --layer with one of ['counts', 'raw']" in result.output


def test_low_gene_coverage_is_announced(query, onnx_model, tmp_path):
    store = tmp_path / "low.zarr"
    query[:, :25].copy().write_zarr(store)  # 25 of the model's 60 genes at most
    result = CliRunner().invoke(
        main, ["annotate", str(store), "--model", str(onnx_model), "--min-gene-overlap", "0.1",
               "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Warning: the data holds only" in result.output and "unreliable" in result.output


def test_cells_without_counts_in_the_model_genes_get_no_label(query, onnx_model):
    X = sparse.csr_matrix(query.X, dtype=np.float32).tolil()
    model_genes = [i for i, g in enumerate(query.var_names) if not g.startswith("extra_")]
    X[4, model_genes] = 0  # counts only in genes the model does not read
    query.X = X.tocsr()
    query.X.eliminate_zeros()
    assert query.X[4].sum() > 0
    result = annotate(query, onnx_model, progress=False)
    assert query.obs["scNym"].isna().to_numpy().nonzero()[0].tolist() == [4]
    assert result.record["n_cells_without_counts"] == 1


def test_small_misuses_are_named(query, onnx_model, tmp_path, caplog):
    import shutil

    from scnym.infer.memory import predict_adata

    with pytest.raises(ValueError, match="device must be auto, cpu or cuda, not 'gpu'"):
        predict_adata(query.copy(), onnx_model, device="gpu")
    store = tmp_path / "novar.zarr"
    query.write_zarr(store)
    shutil.rmtree(store / "var")
    with pytest.raises(ValueError, match="not an AnnData store"):
        annotate(store, onnx_model, output=tmp_path / "a.csv", progress=False)
    with caplog.at_level("WARNING", logger="scnym.infer.writer"):
        annotate(query.copy(), onnx_model, output=tmp_path / "b.csv", write_probabilities=True,
                 progress=False)  # fmt: skip
    assert "the probabilities are not written" in caplog.text
