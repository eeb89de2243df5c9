"""Helpers for the Kang 2018 IFN-beta PBMC benchmark data in ``../shared/data``."""

from __future__ import annotations

import os
from pathlib import Path

import anndata
import numpy as np
from scipy import sparse

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SCNYM_SHARED_DATA", REPO.parent / "shared" / "data"))
KANG_PATH = SHARED_DATA / "kang2018_ifnb_pbmc_counts.h5ad"
LABEL_KEYS = ("cell_type", "cell_type_coarse")

#: Marker genes used to name the Kang clusters (shared/data/README.md); always kept.
MARKERS = [
    "IL7R", "CCR7", "LEF1", "TCF7", "CD8A", "CD8B", "GNLY", "NKG7", "KLRD1", "MS4A1",
    "CD79A", "CD14", "LYZ", "S100A8", "S100A9", "FCGR3A", "MS4A7", "FCER1A", "CD1C",
    "LILRA4", "CLEC4C", "PPBP", "PF4", "HBB", "HBA1", "ISG15",
]  # fmt: skip


def load_kang() -> anndata.AnnData:
    """Read the Kang counts (13,999 cells x 14,053 genes, raw UMI counts)."""
    if not KANG_PATH.is_file():
        raise FileNotFoundError(
            f"{KANG_PATH} not found; set SCNYM_SHARED_DATA to the folder holding it"
        )
    return anndata.read_h5ad(KANG_PATH)


def highly_variable_genes(X: sparse.csr_matrix, n_top: int, min_frac: float = 0.01) -> np.ndarray:
    """Indices of the ``n_top`` genes of highest log1p(CP10k) variance among expressed genes."""
    lib = np.asarray(X.sum(axis=1)).ravel()
    norm = sparse.diags(1e4 / np.maximum(lib, 1)) @ X
    norm.data = np.log1p(norm.data)
    mean = np.asarray(norm.mean(axis=0)).ravel()
    sq = np.asarray(norm.multiply(norm).mean(axis=0)).ravel()
    var = sq - mean**2
    expressed = np.asarray((X > 0).mean(axis=0)).ravel() >= min_frac
    var[~expressed] = -np.inf
    return np.sort(np.argsort(var)[::-1][:n_top])


def ctrl_to_stim(adata: anndata.AnnData, source: str = "ctrl", label_key: str = "cell_type"):
    """Copy of ``adata`` with a ``label`` column: ``source`` cells labeled, others 'Unlabeled'."""
    adata = adata.copy()
    labels = adata.obs[label_key].astype(str).to_numpy().copy()
    labels[adata.obs["condition"].to_numpy() != source] = "Unlabeled"
    adata.obs["label"] = labels
    return adata
