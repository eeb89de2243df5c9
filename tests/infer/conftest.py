"""Fixtures for the inference tests: a small exported model and stores of its data."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic import make_counts


@pytest.fixture(scope="session")
def onnx_model(tmp_path_factory):
    """An ONNX model exported from a quick training run on synthetic counts."""
    from scnym.api import scnym_api
    from scnym.export import export_model

    root = tmp_path_factory.mktemp("onnx")
    adata = make_counts(n_cells=300, n_genes=60, n_classes=3, seed=11)
    config = {"preset": "new_identity_discovery", "n_epochs": 2, "batch_size": 64,
              "ssl_kwargs": {"min_epochs": 0}}  # fmt: skip
    scnym_api(adata, task="train", groupby="label", out_path=str(root / "model"), config=config)
    export_model(root / "model", root / "model.onnx")
    return root / "model.onnx"


@pytest.fixture()
def query():
    """Query cells: raw counts of the model's genes, shuffled, with extra and missing genes."""
    adata = make_counts(n_cells=230, n_genes=60, n_classes=3, seed=12, shift=0.5)
    rng = np.random.default_rng(0)
    order = rng.permutation(adata.n_vars)[:55]  # 5 model genes missing
    query = adata[:, order].copy()
    extra = make_counts(n_cells=230, n_genes=8, seed=13)
    extra.var_names = [f"extra_{i}" for i in range(8)]
    import anndata

    joined = anndata.concat([query, extra], axis=1, merge="first")
    joined.obs = query.obs.copy()
    return joined
