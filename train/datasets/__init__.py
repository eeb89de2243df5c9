"""Small real datasets shipped with scNym (torch-free)."""

from __future__ import annotations

from pathlib import Path

import anndata

_HERE = Path(__file__).parent
KANG_PBMC_SMALL = _HERE / "kang_pbmc_small.h5ad"


def kang_pbmc_small() -> anndata.AnnData:
    """2,000 PBMCs of Kang et al. 2018 (1,000 control, 1,000 IFN-beta stimulated).

    Raw UMI counts of 2,979 genes (the most variable plus marker genes), with
    ``obs['condition']`` (``ctrl``/``stim``), ``obs['cell_type']`` (10 types) and
    ``obs['cell_type_coarse']`` (9 types). Re-create it with
    ``benchmarks/make_bundled_dataset.py``.

    Examples
    --------
    >>> from scnym.datasets import kang_pbmc_small
    >>> kang_pbmc_small().shape
    (2000, 2979)
    """
    return anndata.read_h5ad(KANG_PBMC_SMALL)
