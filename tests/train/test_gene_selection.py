"""Which genes a model reads: each class's markers (default), the most variable, or all."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import sparse
from scnym.api import scnym_api
from scnym.config import get_config
from scnym.gene_selection import highly_variable_genes, marker_genes
from scnym.modeldir import MANIFEST_FILE
from scnym.preprocessing import log1p_cpm
from synthetic import make_counts

FAST = {"n_epochs": 2, "batch_size": 32, "ssl_kwargs": {"min_epochs": 0}}
# make_counts puts the markers of class c in columns [c * block, (c + 1) * block).
N_GENES, N_CLASSES = 80, 3
BLOCK = N_GENES // (N_CLASSES + 1)


def _labeled(seed: int = 0):
    adata = make_counts(n_cells=300, n_genes=N_GENES, n_classes=N_CLASSES, seed=seed)
    codes = adata.obs["cell_type"].cat.codes.to_numpy()
    return log1p_cpm(adata.X), codes


def test_marker_genes_are_the_class_markers_not_noise():
    X, labels = _labeled()
    chosen = marker_genes(X, labels, n_per_class=4)
    assert chosen.tolist() == sorted(chosen.tolist())
    assert np.all(chosen < N_CLASSES * BLOCK), "a gene without class signal was chosen"
    blocks = set((chosen // BLOCK).tolist())
    assert blocks == set(range(N_CLASSES)), "some class has no marker chosen"
    # Dense and sparse input choose the same genes.
    assert marker_genes(X.toarray(), labels, n_per_class=4).tolist() == chosen.tolist()


def test_marker_genes_keep_a_rare_class_that_variance_misses():
    rng = np.random.default_rng(0)
    n_cells, n_genes = 600, 40
    labels = np.zeros(n_cells, dtype=int)
    labels[:12] = 1  # a rare class (2 %)
    X = rng.gamma(2.0, 0.5, size=(n_cells, n_genes))
    X[:, :10] *= rng.uniform(0.0, 3.0, size=(n_cells, 1))  # variance unrelated to class
    X[:12, 30] += 3.0  # the rare class's only marker
    assert 30 in marker_genes(X, labels, n_per_class=3)
    assert 30 not in highly_variable_genes(X, 10, min_fraction=0.0)


def test_marker_genes_subsample_is_seeded():
    X, labels = _labeled()
    a = marker_genes(X, labels, n_per_class=4, max_cells=100, seed=1)
    assert a.tolist() == marker_genes(X, labels, n_per_class=4, max_cells=100, seed=1).tolist()


def test_marker_genes_edge_cases():
    X, labels = _labeled()
    assert marker_genes(X, np.zeros_like(labels), 4).tolist() == list(range(N_GENES))
    assert marker_genes(X, labels, n_per_class=N_GENES).tolist() == list(range(N_GENES))
    with pytest.raises(ValueError, match="markers_per_class must be at least 1"):
        marker_genes(X, labels, n_per_class=0)


def test_highly_variable_genes_ranks_variance_among_detected_genes():
    rng = np.random.default_rng(0)
    X = rng.normal(1.0, 0.05, size=(200, 6)).clip(0)
    X[:, 2] = rng.normal(1.0, 1.0, size=200).clip(0)  # most variable
    X[:, 4] = rng.normal(1.0, 0.5, size=200).clip(0)  # second
    X[:, 5] = 0.0
    X[0, 5] = 50.0  # huge variance, but detected in one cell only
    assert highly_variable_genes(X, 2).tolist() == [2, 4]
    assert highly_variable_genes(sparse.csr_matrix(X), 2).tolist() == [2, 4]
    assert highly_variable_genes(X, 10).tolist() == list(range(6))
    with pytest.raises(ValueError, match="at least 1"):
        highly_variable_genes(X, 0)


def test_config_rejects_inconsistent_gene_selection():
    with pytest.raises(ValueError, match="gene_selection must be one of"):
        get_config({"gene_selection": "hvg"})
    with pytest.raises(ValueError, match="needs n_top_genes"):
        get_config({"gene_selection": "variance"})
    with pytest.raises(ValueError, match="set gene_selection='variance' as well"):
        get_config({"n_top_genes": 100})
    assert get_config("new_identity_discovery").gene_selection == "markers"


def test_model_reads_markers_chosen_on_the_training_split(tmp_path):
    adata = make_counts(n_cells=300, n_genes=N_GENES, n_classes=N_CLASSES, seed=3)
    config = {**FAST, "markers_per_class": 4}
    scnym_api(adata, task="train", groupby="label", out_path=str(tmp_path), config=config)
    results = adata.uns["scNym_train_results"]
    genes = results["gene_names"]
    assert results["n_genes"] == len(genes) < N_GENES
    columns = adata.var_names.get_indexer(genes)
    assert np.all(columns < N_CLASSES * BLOCK)
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    record = manifest["preprocessing"]["gene_selection"]
    assert record["markers_per_class"] == 4
    assert record["n_genes"] == len(genes) and record["n_genes_in_data"] == N_GENES
    assert manifest["gene_names"] == genes

    # Fine-tuning from that model keeps its genes, whatever the new data would select.
    other = tmp_path / "tuned"
    scnym_api(
        adata,
        task="train",
        groupby="label",
        out_path=str(other),
        trained_model=str(tmp_path),
        config={**config, "markers_per_class": 1},
    )
    assert adata.uns["scNym_train_results"]["gene_names"] == genes


def test_warm_start_needs_the_model_genes(tmp_path):
    adata = make_counts(n_cells=200, n_genes=N_GENES, seed=4)
    config = {**FAST, "gene_selection": "all"}
    scnym_api(adata, task="train", groupby="label", out_path=str(tmp_path), config=config)
    fewer = adata[:, 5:].copy()
    with pytest.raises(ValueError, match="genes it reads are not in this data"):
        scnym_api(fewer, task="train", groupby="label", out_path=str(tmp_path / "b"),
                  trained_model=str(tmp_path), config=config)  # fmt: skip
    renamed = adata.copy()
    renamed.obs["label"] = renamed.obs["label"].astype(str).str.replace("type_0", "type_9")
    with pytest.raises(ValueError, match="its classes .* differ"):
        scnym_api(renamed, task="train", groupby="label", out_path=str(tmp_path / "c"),
                  trained_model=str(tmp_path), config=config)  # fmt: skip


def test_model_keeps_the_most_variable_genes_and_predicts_on_all(tmp_path):
    adata = make_counts(n_cells=200, n_genes=40, seed=2)
    config = {**FAST, "gene_selection": "variance", "n_top_genes": 12}
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
