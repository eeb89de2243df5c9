"""Input checks, normalisation and gene alignment (numpy/scipy only, no torch).

Shared by training, export and annotation; ``scnym.preprocessing`` re-exports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from scipy import sparse

#: Counts per cell of the log1p(CPM) scale scNym models read.
TARGET_SUM = 1e6
#: The largest value a log1p(CPM) matrix can hold.
LOG1P_CPM_MAX = float(np.log1p(TARGET_SUM))

InputKind = Literal["counts", "log1p_cpm"]

NORMALIZE_HINT = (
    "scNym expects raw counts or log1p(CPM): "
    "sc.pp.normalize_total(adata, target_sum=1e6); sc.pp.log1p(adata)"
)


def _values(X) -> np.ndarray:
    """The stored values of a dense or sparse matrix (zeros of sparse matrices omitted)."""
    return X.data if sparse.issparse(X) else np.asarray(X).ravel()


def detect_input_kind(X, what: str = "X") -> InputKind:
    """Tell raw counts from log1p(CPM), refusing anything else.

    Parameters
    ----------
    X
        Dense or sparse ``[cells, genes]`` matrix (or a sample of its rows).
    what
        Name of the matrix in error messages.

    Returns
    -------
    ``'counts'`` when every value is a non-negative integer, ``'log1p_cpm'`` when
    values are non-negative, non-integer and at most ``log1p(1e6)``.

    Raises
    ------
    ValueError
        For NaN/Inf, negative values (scaled data), an empty matrix, or
        non-integer values above ``log1p(1e6)`` (normalised but not logged).
    """
    values = _values(X)
    if values.size == 0 or not np.any(values):
        raise ValueError(f"{what} holds no non-zero values; {NORMALIZE_HINT}")
    if not np.all(np.isfinite(values)):
        n_bad = int(np.sum(~np.isfinite(values)))
        raise ValueError(f"{what} holds {n_bad} NaN or infinite values; remove or fix them first.")
    vmin = float(values.min())
    if vmin < 0:
        raise ValueError(
            f"{what} holds negative values (min {vmin:.3g}): it looks scaled or centred. "
            f"{NORMALIZE_HINT}, or pass the raw counts."
        )
    if np.all(np.mod(values, 1) == 0):
        return "counts"
    vmax = float(values.max())
    if vmax > LOG1P_CPM_MAX + 1e-4:
        raise ValueError(
            f"{what} holds non-integer values up to {vmax:.3g} > log1p(1e6) = {LOG1P_CPM_MAX:.3f}: "
            f"it looks normalised but not log-transformed. {NORMALIZE_HINT}"
        )
    if _off_count_grid(X) > 0.5:
        raise ValueError(
            f"{what} holds values between 0 and {vmax:.3g} that are not log-normalised counts "
            "(within a cell, expm1 of the values are not multiples of one count): it looks "
            f"scaled (e.g. min-max) or otherwise transformed. {NORMALIZE_HINT}, or pass the "
            "raw counts."
        )
    return "log1p_cpm"


def _off_count_grid(X, n_rows: int = 200, min_values: int = 5, max_count: int = 20) -> float:
    """Fraction of (up to ``n_rows``) cells whose expm1(values) are not multiples of one unit.

    In log1p-normalised counts every value of a cell is log1p(k * unit), for an
    integer count k and the cell's unit (``target_sum / total``), whatever genes
    were kept. So expm1 of its values over the smallest are ratios k / c of
    integers, where c (the smallest count) is small: times some c <= ``max_count``
    they are integers, up to float32 rounding. Scaled or otherwise transformed
    data is off this grid.
    """
    X = sparse.csr_matrix(X[:n_rows])
    counts = np.arange(1, max_count + 1)[:, None]
    checked = off = 0
    for row in range(X.shape[0]):
        values = np.expm1(np.minimum(X.data[X.indptr[row] : X.indptr[row + 1]], LOG1P_CPM_MAX))
        values = values[values > 0]
        if values.size < min_values:
            continue
        scaled = values / values.min() * counts  # one row per candidate smallest count
        tolerance = np.maximum(0.05, 3e-3 * scaled)  # stored values may be rounded
        checked += 1
        off += not bool(np.any(np.all(np.abs(scaled - np.rint(scaled)) <= tolerance, axis=1)))
    return off / checked if checked else 0.0


def log1p_cpm(X, library_size: np.ndarray | None = None, target_sum: float = TARGET_SUM):
    """Normalise counts to log1p(counts per ``target_sum``), keeping sparsity.

    Parameters
    ----------
    X
        Counts ``[cells, genes]``, dense or sparse.
    library_size
        Total counts of each cell; defaults to the row sums of ``X``. Pass the
        totals over all genes when ``X`` holds only the model's genes.
    target_sum
        Counts per cell after scaling.

    Returns
    -------
    A float32 matrix of the same kind (CSR for sparse input).
    """
    if library_size is None:
        library_size = np.asarray(X.sum(axis=1)).ravel()
    scale = (target_sum / np.maximum(np.asarray(library_size, dtype=np.float64), 1e-12)).astype(
        np.float32
    )
    if sparse.issparse(X):
        X = sparse.csr_matrix(X, dtype=np.float32, copy=True)
        X.data *= np.repeat(scale, np.diff(X.indptr))
        np.log1p(X.data, out=X.data)
        return X
    return np.log1p(np.asarray(X, dtype=np.float32) * scale[:, None])


def to_log1p_cpm(
    X, kind: InputKind | None = None
) -> tuple[np.ndarray | sparse.csr_matrix, InputKind]:
    """Return ``X`` as float32 log1p(CPM) (CSR if sparse) and the kind it was given as."""
    kind = kind or detect_input_kind(X)
    if kind == "counts":
        return log1p_cpm(X), kind
    if sparse.issparse(X):
        return sparse.csr_matrix(X, dtype=np.float32), kind
    return np.asarray(X, dtype=np.float32), kind


def check_unique_genes(genes: Sequence[str]) -> None:
    """Raise if gene names repeat."""
    index = pd.Index(genes)
    if not index.is_unique:
        dupes = index[index.duplicated()].unique()[:5].tolist()
        raise ValueError(
            f"Duplicate gene names ({len(index[index.duplicated()])} repeats, e.g. {dupes}); "
            "make them unique with adata.var_names_make_unique()."
        )


def gene_index_map(sample_genes: Sequence[str], model_genes: Sequence[str]) -> np.ndarray:
    """For each model gene, its column in the sample (``-1`` when missing)."""
    return pd.Index(sample_genes).get_indexer(pd.Index(model_genes))


def align_genes(X, sample_genes: Sequence[str], model_genes: Sequence[str]):
    """Reorder ``X``'s columns to ``model_genes``; missing genes are zero, extras dropped.

    Sparse input stays sparse (CSR). Identical gene lists return ``X`` unchanged.
    """
    sample_genes, model_genes = list(sample_genes), list(model_genes)
    if sample_genes == model_genes:
        return X
    index = gene_index_map(sample_genes, model_genes)
    found = index >= 0
    if sparse.issparse(X):
        X = sparse.csr_matrix(X)
        # Select found columns, then scatter them into model positions with a
        # (sample -> model) selection matrix: one sparse product, no Python loop.
        selector = sparse.csr_matrix(
            (np.ones(found.sum(), dtype=X.dtype), (index[found], np.flatnonzero(found))),
            shape=(X.shape[1], len(model_genes)),
        )
        return (X @ selector).tocsr()
    X = np.asarray(X)
    out = np.zeros((X.shape[0], len(model_genes)), dtype=X.dtype)
    out[:, found] = X[:, index[found]]
    return out


__all__ = [
    "LOG1P_CPM_MAX",
    "NORMALIZE_HINT",
    "TARGET_SUM",
    "InputKind",
    "align_genes",
    "check_unique_genes",
    "detect_input_kind",
    "gene_index_map",
    "log1p_cpm",
    "to_log1p_cpm",
]
