"""Fixtures for the inference tests: query cells for the shared ``onnx_model`` (tests/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic import make_counts


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
