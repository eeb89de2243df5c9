"""Training on the most variable genes only (``n_top_genes``): a smaller model."""

from __future__ import annotations

import json

import numpy as np
from scnym.api import scnym_api
from scnym.modeldir import MANIFEST_FILE
from scnym.preprocessing import highly_variable_genes, log1p_cpm
from synthetic import make_counts

FAST = {"n_epochs": 2, "batch_size": 32, "ssl_kwargs": {"min_epochs": 0}}


def test_model_keeps_the_most_variable_genes_and_predicts_on_all(tmp_path):
    adata = make_counts(n_cells=200, n_genes=40, seed=2)
    config = {**FAST, "n_top_genes": 12}
    scnym_api(adata, task="train", groupby="label", out_path=str(tmp_path), config=config)
    genes = adata.uns["scNym_train_results"]["gene_names"]
    expected = highly_variable_genes(log1p_cpm(adata.X), 12)
    assert genes == adata.var_names[expected].tolist()
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert manifest["preprocessing"]["gene_selection"]["n_top_genes"] == 12
    assert manifest["preprocessing"]["gene_selection"]["n_genes_in_data"] == 40

    # Prediction normalises over all of the cell's genes, then keeps the model's:
    # the same answer as predicting on data that holds only the model genes plus
    # their library size folded in (log1p(CPM) computed on all genes).
    full = adata.copy()
    scnym_api(full, task="predict", trained_model=str(tmp_path))
    subset = adata.copy()
    subset.X = log1p_cpm(adata.X)
    subset = subset[:, genes].copy()
    scnym_api(subset, task="predict", trained_model=str(tmp_path))
    np.testing.assert_allclose(full.obsm["X_scnym"], subset.obsm["X_scnym"], atol=1e-5)
