"""What training reads from ``obs``: the labels, a fixed split and the domains.

``obs[groupby]`` holds the cell types, :data:`UNLABELED_TOKEN` marking target
cells; ``obs['scNym_split']``, when present, fixes the train/test/val split of
the labeled cells; ``obs[domain_groupby]`` names each cell's domain.
"""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd

from .config import Config
from .fitting import Splits, make_splits

#: Label of the target cells (unlabeled data for semi-supervision), matched in any case.
UNLABELED_TOKEN = "Unlabeled"
#: Fewest labeled cells that can be split into train / model-selection / validation sets.
MIN_LABELED_CELLS = 20
#: obs column that fixes the train/test/val split of labeled cells when present.
SPLIT_KEY = "scNym_split"


def label_codes(adata: anndata.AnnData, groupby: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Return (codes with -1 for unlabeled, unlabeled mask, sorted class names).

    Raises
    ------
    ValueError
        For missing labels, or too few labeled cells or classes to train on.
    """
    column = adata.obs[groupby]
    if column.isna().any():
        raise ValueError(
            f"obs[{groupby!r}] has {int(column.isna().sum())} missing labels; "
            f"mark target cells with {UNLABELED_TOKEN!r} instead"
        )
    labels = column.astype(str).to_numpy()
    unlabeled = np.char.lower(labels.astype(str)) == UNLABELED_TOKEN.lower()
    _refuse_near_misses(labels[~unlabeled], groupby)
    class_names = sorted(np.unique(labels[~unlabeled]).tolist())
    n_labeled = int((~unlabeled).sum())
    if n_labeled < MIN_LABELED_CELLS or len(class_names) < 2:
        raise ValueError(
            f"Too few labeled cells: {n_labeled} in {len(class_names)} classes "
            f"(obs[{groupby!r}] != {UNLABELED_TOKEN!r}); training needs at least "
            f"{MIN_LABELED_CELLS} labeled cells of at least 2 classes. Label more cells."
        )
    codes = pd.Categorical(labels, categories=class_names).codes.astype(np.int64)
    return codes, unlabeled, class_names


#: Spellings of "unlabeled" that are not the marker but would be learned as a cell type.
_NEAR_MISSES = {"unlabelled", "un-labeled", "un-labelled", "unlabel", "not labeled", "none", "nan"}


def _refuse_near_misses(labels: np.ndarray, groupby: str) -> None:
    """Refuse labels that look meant as the unlabeled marker (any case of it is the marker)."""
    found = sorted({label for label in np.unique(labels) if label.strip().lower() in _NEAR_MISSES})
    if found:
        raise ValueError(
            f"obs[{groupby!r}] holds {found}, which would be learned as a cell type: mark "
            f"target cells with {UNLABELED_TOKEN!r} (any case), or rename them if they are a type"
        )


def labeled_splits(adata: anndata.AnnData, labeled_rows: np.ndarray, cfg: Config) -> Splits:
    """The split of the labeled rows: ``obs[SPLIT_KEY]`` if present, else a random one.

    Raises
    ------
    ValueError
        When ``obs[SPLIT_KEY]`` leaves a part too small.
    """
    if SPLIT_KEY not in adata.obs.columns:
        return make_splits(labeled_rows, cfg.test_fraction, cfg.val_fraction, cfg.seed)
    split = adata.obs[SPLIT_KEY].astype(str).to_numpy()
    parts = {name: labeled_rows[split[labeled_rows] == name] for name in ("train", "test", "val")}
    if len(parts["train"]) < 2 or len(parts["test"]) < 1 or len(parts["val"]) < 1:
        counts = {name: len(rows) for name, rows in parts.items()}
        raise ValueError(
            f"obs[{SPLIT_KEY!r}] gives labeled split sizes {counts}; "
            "need at least 2 'train', 1 'test' and 1 'val' cells"
        )
    return Splits(**parts)


def domain_codes(
    adata: anndata.AnnData, domain_groupby: str | None
) -> tuple[np.ndarray | None, int]:
    """Return (domain code per cell or None, number of domains, at least 2)."""
    if domain_groupby is None:
        return None, 2
    if domain_groupby not in adata.obs.columns:
        raise ValueError(f"domain_groupby={domain_groupby!r} is not a column of adata.obs")
    values = adata.obs[domain_groupby].astype(str).to_numpy()
    names = np.unique(values)
    codes = pd.Categorical(values, categories=names).codes.astype(np.int64)
    return codes, max(len(names), 2)
