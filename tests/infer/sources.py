"""Helpers of the source tests (SOMA, S3, Dask): Census-like SOMA Experiments, ports, result checks."""

from __future__ import annotations

import socket
from pathlib import Path

import anndata
import numpy as np
import pandas as pd


def census_like(adata: anndata.AnnData) -> anndata.AnnData:
    """``adata`` with Ensembl-like var names and its gene names in ``var['feature_name']``.

    As in the Census, the var index (``feature_id``) cannot match the model's
    genes: only ``--gene-key feature_name`` does.
    """
    census = adata.copy()
    census.var = pd.DataFrame(
        {"feature_name": adata.var_names.astype(str)},
        index=[f"ENSG{i:011d}" for i in range(adata.n_vars)],
    )
    census.obs["domain"] = census.obs["domain"].astype(str)
    return census


def write_soma(adata: anndata.AnnData, uri: str | Path) -> str:
    """Write ``adata`` as a SOMA Experiment: measurement ``RNA``, X layer ``raw``."""
    import tiledbsoma.io

    tiledbsoma.io.from_anndata(str(uri), census_like(adata), measurement_name="RNA",
                               X_layer_name="raw")  # fmt: skip
    return str(uri)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_same_results(a: anndata.AnnData, b: anndata.AnnData) -> None:
    """The same cells, labels, confidences and embedding, exactly."""
    np.testing.assert_array_equal(a.obs_names, b.obs_names)
    np.testing.assert_array_equal(a.obs["scNym"].astype(str), b.obs["scNym"].astype(str))
    np.testing.assert_array_equal(a.obs["scNym_confidence"], b.obs["scNym_confidence"])
    np.testing.assert_array_equal(a.obsm["X_scnym"], b.obsm["X_scnym"])
