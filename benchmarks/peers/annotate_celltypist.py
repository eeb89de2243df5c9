"""End-to-end annotation with CellTypist: read, normalise, annotate, write.

Runs in ``benchmarks/peers/.venv-celltypist``. Reads an ``.h5ad`` of raw counts,
normalises to log1p(CP10k), runs ``celltypist.annotate`` (its defaults: best
match, no majority voting) and writes ``result.to_adata()`` as ``.h5ad``.
Prints a JSON line with the cells and the seconds from reading to writing.

Usage::

    benchmarks/peers/.venv-celltypist/bin/python benchmarks/peers/annotate_celltypist.py
        CELLS.h5ad --model MODEL.pkl --output OUT.h5ad
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import anndata
from common import Stopwatch
from run_celltypist import normalise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cells", type=Path)
    parser.add_argument("--model", type=Path, required=True, help="CellTypist model .pkl")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    import celltypist

    with Stopwatch() as clock:
        adata = normalise(anndata.read_h5ad(args.cells))
        result = celltypist.annotate(adata, model=str(args.model))
        result.to_adata().write_h5ad(args.output)
    print(json.dumps({"cells": int(adata.n_obs), "seconds": clock.seconds}))


if __name__ == "__main__":
    main()
