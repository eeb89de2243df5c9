"""End-to-end annotation with the original scNym 0.3.2: read, normalise, predict, write.

Runs in ``benchmarks/peers/.venv-scnym032``. Reads an ``.h5ad`` of raw counts,
normalises to log1p(CPM) (``sc.pp.normalize_total(target_sum=1e6)`` +
``sc.pp.log1p``, as the original's error message advises), predicts with
``scnym_api(task='predict')`` and writes the annotated ``.h5ad``. Prints a JSON
line with the cells and the seconds from reading to writing.

Usage::

    benchmarks/peers/.venv-scnym032/bin/python benchmarks/peers/annotate_original.py
        CELLS.h5ad --model-dir DIR --config no_new_identity --output OUT.h5ad
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import anndata
from common import Stopwatch

CPM = 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cells", type=Path)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--config", default="no_new_identity", help="the model's training preset")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    import scanpy as sc
    from scnym.api import scnym_api

    with Stopwatch() as clock, tempfile.TemporaryDirectory() as scratch:
        adata = anndata.read_h5ad(args.cells)
        sc.pp.normalize_total(adata, target_sum=CPM)
        sc.pp.log1p(adata)
        scnym_api(
            adata,
            task="predict",
            trained_model=str(args.model_dir),
            out_path=scratch,
            config=args.config,
        )
        adata.write_h5ad(args.output)
    print(json.dumps({"cells": int(adata.n_obs), "seconds": clock.seconds}))


if __name__ == "__main__":
    main()
