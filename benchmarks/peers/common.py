"""Helpers shared by the benchmark runners; each runner runs in its own tool's venv.

Only the standard library, numpy, scipy, pandas and anndata are used here: every
venv (ours, scNym 0.3.2's, CellTypist's) has them.

A runner reads the prepared ``.h5ad`` of a task (raw counts in ``X``; ``obs``
columns ``label`` with ``'Unlabeled'`` for the target cells, ``cell_type``,
``cell_type_coarse``, ``condition``), trains, predicts the target cells and
writes two files: a CSV of predictions (index: cell names, one column per
variant) and a JSON of measurements.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import resource
import sys
import time
from pathlib import Path

import numpy as np
from scipy import sparse

UNLABELED = "Unlabeled"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB.

    ``VmHWM`` of ``/proc/self/status`` is this process's own high-water mark
    (reset at ``exec``); ``ru_maxrss`` may also hold the parent's peak, which
    Linux carries over into a child at ``fork``/``exec``, so it is only the
    fallback where ``/proc`` is missing.
    """
    try:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and (where installed) torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (the original draws its splits from it)
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(seed)


def lognorm(X, target_sum: float) -> sparse.csr_matrix:
    """log1p of counts scaled to ``target_sum`` per cell (library size over all genes)."""
    X = sparse.csr_matrix(X, dtype=np.float32)
    lib = np.asarray(X.sum(axis=1)).ravel()
    out = sparse.diags((target_sum / np.maximum(lib, 1)).astype(np.float32)) @ X
    out = sparse.csr_matrix(out, dtype=np.float32)
    np.log1p(out.data, out=out.data)
    return out


def split_source_target(adata):
    """(labeled source cells, target cells) of a prepared task file."""
    target = adata.obs["label"].astype(str).to_numpy() == UNLABELED
    return adata[~target].copy(), adata[target].copy()


def train_parser(doc: str) -> argparse.ArgumentParser:
    """Command-line options every runner's ``train`` command takes."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="prepared task .h5ad")
    parser.add_argument("--config", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="override the epochs")
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--predictions", type=Path, required=True, help="CSV to write")
    parser.add_argument("--measurements", type=Path, required=True, help="JSON to write")
    return parser


class Stopwatch:
    """Context manager measuring wall seconds into ``.seconds``."""

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._start


def python_info() -> dict:
    """Version of the interpreter running this runner."""
    return {"python": platform.python_version(), "executable": sys.executable}


def write_outputs(predictions, measurements: dict, args: argparse.Namespace) -> None:
    """Write the predictions (a DataFrame) and the measurements (a dict)."""
    args.predictions.parent.mkdir(parents=True, exist_ok=True)
    predictions.to_csv(args.predictions)
    measurements = {**measurements, **python_info()}
    args.measurements.write_text(json.dumps(measurements, indent=1))
