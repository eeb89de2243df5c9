"""Synthetic single-cell counts with cell types and an optional domain shift."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
from scipy import sparse


def make_counts(
    n_cells: int = 300,
    n_genes: int = 60,
    n_classes: int = 3,
    seed: int = 0,
    unlabeled_fraction: float = 0.3,
    shift: float = 0.0,
    depth: float = 2000.0,
    marker_fold: float = 4.0,
) -> anndata.AnnData:
    """Raw-count AnnData with ``obs['cell_type']``, ``obs['domain']`` and ``obs['label']``.

    Each class over-expresses its own block of marker genes. Cells of the
    ``target`` domain (the last ``unlabeled_fraction``) are labeled ``Unlabeled``
    in ``obs['label']``; with ``shift > 0`` their expression carries a batch
    effect: per-gene factors (lognormal, sigma ``shift``) and a block of
    non-marker genes induced in every target cell.
    """
    rng = np.random.default_rng(seed)
    block = n_genes // (n_classes + 1)
    base = rng.gamma(2.0, 1.0, size=n_genes)
    profiles = np.tile(base, (n_classes, 1))
    for c in range(n_classes):
        profiles[c, c * block : (c + 1) * block] *= marker_fold
    cell_type = rng.integers(0, n_classes, size=n_cells)
    n_target = int(round(n_cells * unlabeled_fraction))
    target = np.zeros(n_cells, dtype=bool)
    target[n_cells - n_target :] = True
    rates = profiles[cell_type].copy()
    if shift > 0:
        # A batch effect: every gene scaled by its own factor in all target cells,
        # and a block of non-marker genes induced, independent of cell type.
        gene_factor = rng.lognormal(0.0, shift, size=n_genes)
        gene_factor[n_classes * block :] *= 1.0 + 4.0 * shift
        rates[target] *= gene_factor
    rates /= rates.sum(axis=1, keepdims=True)
    library = depth * rng.lognormal(0.0, 0.3, size=n_cells)
    counts = rng.poisson(rates * library[:, None]).astype(np.float32)
    names = np.array([f"type_{c}" for c in range(n_classes)])
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(names[cell_type]),
            "domain": np.where(target, "target", "source"),
        },
        index=[f"cell_{i}" for i in range(n_cells)],
    )
    obs["label"] = np.where(target, "Unlabeled", obs["cell_type"].astype(str))
    var = pd.DataFrame(index=[f"gene_{g}" for g in range(n_genes)])
    return anndata.AnnData(X=sparse.csr_matrix(counts), obs=obs, var=var)


def log1p_cpm(adata: anndata.AnnData) -> anndata.AnnData:
    """Copy of ``adata`` with ``X`` normalised to log1p(CPM) (dense)."""
    out = adata.copy()
    X = out.X.toarray() if sparse.issparse(out.X) else np.asarray(out.X)
    out.X = np.log1p(X / X.sum(axis=1, keepdims=True) * 1e6).astype(np.float32)
    return out
