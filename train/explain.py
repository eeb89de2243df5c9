"""Which genes made the model call each type: the workflow, short of the gradients.

:func:`scnym.interpret.rank_genes` loads a model's attribution methods and hands
them to :func:`explain_groups`, which prepares the model's input as prediction
does (:func:`scnym.infer.memory.model_inputs`), samples each group's cells (:func:`sample_groups`),
picks the class each group is explained toward (:func:`group_targets`),
attributes, and ranks the genes of each group (:func:`rank_table`) into a table
and scanpy's ``rank_genes_groups`` structure (:func:`rank_genes_groups_uns`).
Nothing here needs torch: the gradients of a model directory are in
:mod:`scnym.interpret`, the finite differences of an ONNX model in
:mod:`scnym.onnx_attribution`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import anndata
import numpy as np
import pandas as pd
from scipy import sparse
from scnym.infer.contract import DEFAULT_EXPLAIN_KEY, DEFAULT_KEY_ADDED, DEFAULT_MIN_GENE_OVERLAP
from scnym.infer.memory import model_inputs
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

#: Attribution methods: gradient of the class logit, the same with guided
#: backpropagation, integrated gradients of the class probability.
METHODS: tuple[str, ...] = ("saliency", "guided", "integrated_gradients")
#: Columns of the ranked-genes table (rank 1 = the strongest attribution).
TABLE_COLUMNS: list[str] = ["group", "rank", "gene", "score"]
#: Integrated gradients completeness: a cell's attributions must sum to its change in
#: class probability within ``COMPLETENESS_ATOL + COMPLETENESS_RTOL * |change|``.
COMPLETENESS_RTOL = 0.05
COMPLETENESS_ATOL = 0.01


class Attribution(Protocol):
    """What :func:`explain_groups` needs of a model's attribution methods."""

    gene_names: list[str]
    class_names: list[str]
    #: Method -> the output it attributes (``'logit'``, ``'probability'``, ...).
    outputs: dict[str, str]

    def probabilities(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities ``[cells, classes]`` of log1p(CPM) rows in the model's genes."""
        ...

    def attribute(self, X: np.ndarray, index: int, method: str) -> tuple[np.ndarray, np.ndarray]:
        """Attributions ``[cells, genes]`` toward class ``index``, and for each cell
        whether they are complete (integrated gradients; True otherwise)."""
        ...


def dense_rows(X, rows: np.ndarray) -> np.ndarray:
    """Rows of a dense or sparse matrix as a float32 array."""
    block = X[rows]
    return np.asarray(block.toarray() if sparse.issparse(block) else block, dtype=np.float32)


def check_groupby(adata: anndata.AnnData, groupby: str) -> None:
    """Raise a :class:`ValueError` naming the columns when ``obs`` has no column ``groupby``."""
    if groupby not in adata.obs:
        raise ValueError(
            f"obs has no column {groupby!r}; columns: {list(adata.obs.columns)}. "
            "Group by a column of labels or clusters, or by the prediction ('scNym')."
        )


def group_labels(adata: anndata.AnnData, groupby: str) -> pd.Series:
    """``obs[groupby]`` as strings, its categories (or sorted values) as the group order.

    Raises
    ------
    ValueError
        When ``obs`` has no such column.
    """
    check_groupby(adata, groupby)
    column = adata.obs[groupby]
    if isinstance(column.dtype, pd.CategoricalDtype):
        order = [str(c) for c in column.cat.categories]
    else:
        order = sorted(column.dropna().astype(str).unique())
    labels = column.astype(str).where(column.notna())
    return pd.Series(pd.Categorical(labels, categories=order), index=column.index)


def sample_groups(labels: pd.Series, cells_per_group: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Row indices of up to ``cells_per_group`` cells of each group, drawn with ``seed``.

    Groups without cells are left out; rows come back sorted.
    """
    if cells_per_group < 1:
        raise ValueError(f"cells_per_group must be at least 1, not {cells_per_group}")
    rng = np.random.default_rng(seed)
    codes = labels.cat.codes.to_numpy()
    samples = {}
    for code, group in enumerate(labels.cat.categories):
        rows = np.flatnonzero(codes == code)
        if len(rows) > cells_per_group:
            rows = np.sort(rng.choice(rows, size=cells_per_group, replace=False))
        if len(rows):
            samples[str(group)] = rows
    if not samples:
        raise ValueError("no cell has a label in the groupby column")
    return samples


def group_targets(
    samples: dict[str, np.ndarray],
    class_names: Sequence[str],
    predict: Callable[[np.ndarray], np.ndarray],
) -> dict[str, str]:
    """The class each group is explained toward.

    A group named like one of the model's classes is explained toward that class;
    any other group (clusters, labels of another vocabulary) toward the class the
    model predicts most often among its sampled cells.

    Parameters
    ----------
    samples
        Group -> row indices (:func:`sample_groups`).
    class_names
        The model's classes.
    predict
        Row indices -> class probabilities ``[rows, classes]``.
    """
    classes = [str(c) for c in class_names]
    targets = {}
    for group, rows in samples.items():
        if group in classes:
            targets[group] = group
            continue
        votes = np.bincount(predict(rows).argmax(axis=1), minlength=len(classes))
        targets[group] = classes[int(votes.argmax())]
        logger.info(
            "Group %r is not a class of the model: explained toward %r, predicted for %d of "
            "its %d sampled cells",
            group, targets[group], int(votes.max()), len(rows),
        )  # fmt: skip
    return targets


def rank_table(
    scores: dict[str, np.ndarray], gene_names: Sequence[str], usable: np.ndarray, n_genes: int
) -> pd.DataFrame:
    """The ``n_genes`` highest-scoring usable genes of each group, one row a gene.

    Columns :data:`TABLE_COLUMNS`; rank 1 is the highest score. Genes the data lacks
    (``usable`` False) are left out: they were zero in every cell.
    """
    if n_genes < 1:
        raise ValueError(f"n_genes must be at least 1, not {n_genes}")
    genes = np.asarray(gene_names, dtype=object)[usable]
    frames = []
    for group, group_scores in scores.items():
        kept = np.asarray(group_scores)[usable]
        order = np.argsort(-kept, kind="stable")[:n_genes]
        frames.append(
            pd.DataFrame(
                {"group": group, "rank": np.arange(1, len(order) + 1), "gene": genes[order],
                 "score": kept[order].astype(np.float32)}
            )
        )  # fmt: skip
    return pd.concat(frames, ignore_index=True)[TABLE_COLUMNS]


def _log_fold_changes(
    X, labels: pd.Series, gene_names: Sequence[str], table: pd.DataFrame
) -> dict[str, np.ndarray]:
    """log2 fold change of each group's ranked genes, group vs the other cells (scanpy's formula)."""
    codes = labels.cat.codes.to_numpy()
    changes = {}
    for group, genes in table.groupby("group", sort=False)["gene"]:
        values = X[:, pd.Index(gene_names).get_indexer(genes)]
        inside = codes == labels.cat.categories.get_loc(group)
        outside = (codes >= 0) & ~inside
        means = [
            np.expm1(np.asarray(values[mask].mean(axis=0)).ravel()) if mask.any() else 0.0
            for mask in (inside, outside)
        ]
        changes[group] = np.log2((means[0] + 1e-9) / (means[1] + 1e-9)).astype(np.float32)
    return changes


def rank_genes_groups_uns(
    table: pd.DataFrame, X, labels: pd.Series, gene_names: Sequence[str], params: dict
) -> dict[str, Any]:
    """The ranking in scanpy's ``rank_genes_groups`` structure.

    ``names`` and ``scores`` (the mean attribution) are record arrays with one field
    a group; ``logfoldchanges`` compares the group's mean expression with the other
    cells' (scanpy's formula, on the model's log1p(CPM) input); attributions come
    with no test, so ``pvals`` and ``pvals_adj`` are NaN. ``params`` holds scanpy's
    keys (``groupby``, ``reference``, ``method``, ``use_raw``, ``layer``,
    ``corr_method``) and the run's settings.
    """
    groups = list(table["group"].unique())
    by_group = {g: frame for g, frame in table.groupby("group", sort=False)}
    length = min(len(frame) for frame in by_group.values())
    changes = _log_fold_changes(X, labels, gene_names, table)

    def records(values: Callable[[str], np.ndarray]) -> np.recarray:
        return np.rec.fromarrays([values(g)[:length] for g in groups], names=groups)

    nan = np.full(length, np.nan)
    return {
        "params": params,
        "names": records(lambda g: by_group[g]["gene"].to_numpy(dtype=object)),
        "scores": records(lambda g: by_group[g]["score"].to_numpy(dtype=np.float32)),
        "logfoldchanges": records(lambda g: changes[g]),
        "pvals": records(lambda g: nan),
        "pvals_adj": records(lambda g: nan),
    }


def completeness_holds(attributions: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """Whether each cell's attributions sum to its change in class probability.

    Within ``COMPLETENESS_ATOL + COMPLETENESS_RTOL * |change|`` (probability units:
    0.01 + 5 %).
    """
    gaps = np.abs(attributions.sum(axis=1) - deltas)
    return gaps <= COMPLETENESS_ATOL + COMPLETENESS_RTOL * np.abs(deltas)


def warn_incomplete(holds: np.ndarray, n_steps: int) -> int:
    """Log a warning when completeness fails for some cells; return how many."""
    n_failed = int((~np.asarray(holds)).sum())
    if n_failed:
        logger.warning(
            "Integrated gradients sum to the change in probability within %.2f + %.0f%% for "
            "%d of %d cells only (%d steps); increase the number of steps for a closer "
            "approximation",
            COMPLETENESS_ATOL, 100 * COMPLETENESS_RTOL, len(holds) - n_failed, len(holds), n_steps,
        )  # fmt: skip
    return n_failed


def explain_groups(
    adata: anndata.AnnData,
    attribution: Attribution,
    groupby: str,
    method: str,
    n_genes: int,
    cells_per_group: int,
    seed: int,
    layer: str | None,
    progress: bool,
    min_gene_overlap: float = DEFAULT_MIN_GENE_OVERLAP,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Rank the genes of each group of ``obs[groupby]``: the steps of :func:`scnym.interpret.rank_genes`.

    Returns
    -------
    The ranked table (:data:`TABLE_COLUMNS`) and the result in scanpy's
    ``rank_genes_groups`` structure, its ``params`` holding the run's settings
    (``model`` is the caller's): ``groups`` and, in that order, ``targets`` (the
    class each was explained toward) and ``n_cells`` (cells sampled), and for
    integrated gradients the number of cells whose completeness failed
    (``n_incomplete``; a warning says so too).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    if n_genes < 1:
        raise ValueError(f"n_genes must be at least 1, not {n_genes}")
    predict_groups = groupby == DEFAULT_KEY_ADDED and groupby not in adata.obs
    if not predict_groups:
        check_groupby(adata, groupby)
    X, found = model_inputs(adata, attribution.gene_names, layer, min_gene_overlap)
    if predict_groups:
        logger.info("obs[%r] is absent: predicting it with the model", groupby)
        adata.obs[groupby] = _predict_labels(attribution, X)
    labels = group_labels(adata, groupby)
    samples = sample_groups(labels, cells_per_group, seed)
    targets = group_targets(
        samples,
        attribution.class_names,
        lambda rows: attribution.probabilities(dense_rows(X, rows)),
    )
    scores, holds = _attribute_groups(attribution, X, samples, targets, method, progress)
    table = rank_table(scores, attribution.gene_names, found, n_genes)
    params = {
        "groupby": groupby, "reference": "rest", "method": f"scnym_{method}", "use_raw": False,
        "layer": layer or "X", "corr_method": "none", "output": attribution.outputs[method],
        "seed": seed, "cells_per_group": cells_per_group,
        # Lists in group order, not dicts: a group name may hold '/', which h5ad keys cannot.
        "groups": list(samples), "targets": [targets[group] for group in samples],
        "n_cells": [len(rows) for rows in samples.values()],
    }  # fmt: skip
    if method == "integrated_gradients":
        n_steps = getattr(attribution, "n_steps", 0)
        params.update(n_steps=n_steps, n_incomplete=warn_incomplete(holds, n_steps),
                      completeness_tolerance=f"{COMPLETENESS_ATOL} + {COMPLETENESS_RTOL:.0%}")  # fmt: skip
    return table, rank_genes_groups_uns(table, X, labels, attribution.gene_names, params)


def _predict_labels(attribution: Attribution, X, block_rows: int = 4096) -> pd.Categorical:
    """The most probable class of every row, predicted block by block."""
    classes = np.asarray(attribution.class_names)
    codes = [
        attribution.probabilities(dense_rows(X, slice(start, start + block_rows))).argmax(axis=1)
        for start in range(0, X.shape[0], block_rows)
    ]
    return pd.Categorical(classes[np.concatenate(codes)], categories=classes.tolist())


def _attribute_groups(
    attribution: Attribution,
    X,
    samples: dict[str, np.ndarray],
    targets: dict[str, str],
    method: str,
    progress: bool,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Mean attribution per gene of each group toward its target, and each cell's completeness."""
    classes = list(attribution.class_names)
    scores, holds = {}, []
    total = sum(len(rows) for rows in samples.values())
    with tqdm(
        total=total, unit="cells", desc=f"Explaining ({method})", disable=not progress
    ) as bar:
        for group, rows in samples.items():
            values, complete = attribution.attribute(
                dense_rows(X, rows), classes.index(targets[group]), method
            )
            usable = ~np.isnan(values).any(axis=1)
            if not usable.all():
                logger.warning(
                    "Group %r: %d of %d cells left out (their class probabilities underflowed)",
                    group, int((~usable).sum()), len(rows),
                )  # fmt: skip
            scores[group] = values[usable].mean(axis=0) if usable.any() else np.zeros(X.shape[1])
            holds.append(complete)
            bar.update(len(rows))
    return scores, np.concatenate(holds)


__all__ = [
    "DEFAULT_EXPLAIN_KEY",
    "COMPLETENESS_ATOL",
    "COMPLETENESS_RTOL",
    "Attribution",
    "METHODS",
    "TABLE_COLUMNS",
    "dense_rows",
    "group_labels",
    "group_targets",
    "check_groupby",
    "completeness_holds",
    "explain_groups",
    "model_inputs",
    "rank_genes_groups_uns",
    "rank_table",
    "sample_groups",
    "warn_incomplete",
]
