"""Which genes a model reads: all of them, the most variable, or each class's markers.

A model trained on fewer genes is smaller and faster to train and to run, and
the marker choice also generalises better across conditions (see
``gene_selection`` in :class:`scnym.config.Config`). The library size of a cell
is always taken over all its genes before the selection, so selection changes
which columns the model reads, never their values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse

#: z-scores are clipped here before the marker regression, as CellTypist does,
#: so that a handful of extreme cells cannot dominate a gene's weight.
Z_CLIP = 10.0
#: L2 strength of the marker regression (inverse, scikit-learn's ``C``).
MARKER_C = 0.1
MARKER_MAX_ITER = 200


@dataclass
class GeneSelection:
    """Columns chosen for a model, and how (recorded in the manifest)."""

    columns: np.ndarray
    record: dict[str, Any] | None


def select_genes(X, labels: np.ndarray, config) -> GeneSelection:
    """Apply ``config.gene_selection`` to log1p(CPM) data.

    Parameters
    ----------
    X
        log1p(CPM) ``[cells, genes]`` of every cell, dense or sparse.
    labels
        Class code of each cell, ``-1`` for unlabeled cells (not used to select).
    config
        A :class:`scnym.config.Config`.

    Returns
    -------
    The selected columns (sorted) and a description for the manifest
    (``None`` when all genes are kept).
    """
    n_genes = X.shape[1]
    method = config.gene_selection
    if method == "all":
        return GeneSelection(np.arange(n_genes), None)
    if method == "variance":
        columns = highly_variable_genes(X, config.n_top_genes)
        record = {
            "method": "top variance of log1p(CPM), genes detected in >= 1% of cells",
            "n_top_genes": config.n_top_genes,
        }
    else:
        labeled = labels >= 0
        columns = marker_genes(
            X[np.flatnonzero(labeled)],
            labels[labeled],
            n_per_class=config.markers_per_class,
            max_cells=config.markers_max_cells,
            seed=config.seed,
        )
        record = {
            "method": "largest |coefficient| per class of an L2 logistic regression on "
            "z-scored log1p(CPM) of the labeled cells",
            "markers_per_class": config.markers_per_class,
        }
    return GeneSelection(columns, {**record, "n_genes": len(columns), "n_genes_in_data": n_genes})


def highly_variable_genes(X, n_top: int, min_fraction: float = 0.01) -> np.ndarray:
    """Columns of the ``n_top`` most variable genes of a log1p-normalised matrix.

    The variance of log1p(CPM) is ranked among genes detected in at least
    ``min_fraction`` of the cells (so that a handful of outlier cells cannot
    select a gene). This is the simple log-variance criterion rather than
    scanpy's binned dispersion, which would add a heavy dependency for a
    choice that matters little at a few thousand genes.

    Parameters
    ----------
    X
        log1p-normalised expression ``[cells, genes]``, dense or sparse.
    n_top
        How many genes to keep; all genes when it is not smaller than their number.
    min_fraction
        Minimum fraction of cells in which a gene is detected.

    Returns
    -------
    Sorted column indices.
    """
    if n_top is None or n_top < 1:
        raise ValueError(f"n_top_genes must be at least 1, got {n_top}")
    n_genes = X.shape[1]
    if n_top >= n_genes:
        return np.arange(n_genes)
    _, variance, detected = _column_moments(X)
    variance[detected < min_fraction] = -np.inf
    return np.sort(np.argsort(-variance, kind="stable")[:n_top])


def marker_genes(
    X,
    labels: np.ndarray,
    n_per_class: int = 300,
    max_cells: int = 20_000,
    seed: int = 0,
) -> np.ndarray:
    """Columns of the genes a logistic regression weighs most for each class.

    CellTypist's feature selection: a multinomial L2 logistic regression on
    z-scored (clipped at 10) log1p expression of the labeled cells, then the
    ``n_per_class`` genes of largest absolute coefficient for each class,
    pooled. Unlike variance, this keeps the markers of rare classes (platelets,
    erythrocytes) and passes over genes that vary for reasons unrelated to
    identity, such as a stimulation shared by all types.

    Parameters
    ----------
    X
        log1p-normalised expression of labeled cells ``[cells, genes]``.
    labels
        Class of each row.
    n_per_class
        Genes kept per class.
    max_cells
        The regression sees at most this many cells (a random subset), which
        bounds its cost on atlas-sized references.
    seed
        Seed of that subset.

    Returns
    -------
    Sorted column indices; all columns when fewer than two classes are given
    or ``n_per_class`` covers every gene.
    """
    # scikit-learn is part of the `train` extra; imported here so that the
    # torch-free `scnym.preprocessing` users never load it.
    from sklearn.linear_model import LogisticRegression

    if n_per_class < 1:
        raise ValueError(f"markers_per_class must be at least 1, got {n_per_class}")
    labels = np.asarray(labels)
    n_genes = X.shape[1]
    if len(np.unique(labels)) < 2 or n_per_class >= n_genes:
        return np.arange(n_genes)
    if X.shape[0] > max_cells:
        rows = np.sort(np.random.default_rng(seed).choice(X.shape[0], max_cells, replace=False))
        X, labels = X[rows], labels[rows]
    Z = _clipped_scaled(X)
    regression = LogisticRegression(C=MARKER_C, max_iter=MARKER_MAX_ITER).fit(Z, labels)
    weight = np.abs(regression.coef_)
    top = np.argpartition(weight, -n_per_class, axis=1)[:, -n_per_class:]
    return np.unique(top)


def _column_moments(X) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, variance and detection fraction of each column."""
    if sparse.issparse(X):
        X = sparse.csr_matrix(X)
        mean = np.asarray(X.mean(axis=0), dtype=np.float64).ravel()
        sq_mean = np.asarray(X.multiply(X).mean(axis=0), dtype=np.float64).ravel()
        detected = np.bincount(X.indices[X.data > 0], minlength=X.shape[1]) / X.shape[0]
    else:
        X = np.asarray(X, dtype=np.float64)
        mean, sq_mean = X.mean(axis=0), (X * X).mean(axis=0)
        detected = (X > 0).mean(axis=0)
    return mean, np.maximum(sq_mean - mean**2, 0.0), detected


def _clipped_scaled(X):
    """``X`` divided by each column's sd, values above ``mean + Z_CLIP * sd`` clipped.

    Equivalent, for a regression with an unpenalised intercept, to z-scoring
    with the clip: the centring is absorbed by the intercept. Leaving it out
    keeps sparse input sparse. (Clipping below, at ``mean - Z_CLIP * sd``, never
    binds for non-negative data whose mean is under ``Z_CLIP`` sd.)
    """
    mean, variance, _ = _column_moments(X)
    sd = np.sqrt(variance)
    scale = np.divide(1.0, sd, out=np.zeros_like(sd), where=sd > 0).astype(np.float32)
    ceiling = (mean + Z_CLIP * sd).astype(np.float32)
    if sparse.issparse(X):
        Z = sparse.csr_matrix(X, dtype=np.float32, copy=True)
        columns = Z.indices
        Z.data = np.minimum(Z.data, ceiling[columns]) * scale[columns]
        return Z
    return np.minimum(np.asarray(X, dtype=np.float32), ceiling) * scale
