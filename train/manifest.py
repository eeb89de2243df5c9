"""The records a training run leaves: the results dict and the model manifest.

The results dict is scNym 0.3.2's (``scnym_train_results.pkl`` and
``adata.uns['scNym_train_results']``); the manifest (``scnym_model.json``) is
what export reads: genes, classes, architecture, preprocessing, the data
trained on, metrics and versions. :mod:`scnym.modeldir` writes both.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import os
import platform
from typing import Any

import anndata
import numpy as np
import torch
from scnym.infer.preprocessing import TARGET_SUM

from . import __version__
from .calibration import Calibration
from .config import Config
from .fitting import FitResult, Splits
from .labels import UNLABELED_TOKEN
from .modeldir import MANIFEST_FORMAT, WEIGHTS_FILE
from .novelty import NoveltyFit


def training_results(
    out_path: str,
    fit: FitResult,
    genes: list[str],
    class_names: list[str],
    cfg: Config,
    splits: Splits,
) -> dict[str, Any]:
    """The results dict of scNym 0.3.2 (plain types), with the best epoch added."""
    return {
        "model_path": os.path.realpath(os.path.join(out_path, WEIGHTS_FILE)),
        "final_acc": float(fit.final_acc),
        "final_loss": float(fit.final_loss),
        "n_genes": len(genes),
        "n_cell_types": len(class_names),
        "class_names": list(class_names),
        "gene_names": list(genes),
        "model_kwargs": dataclasses.asdict(cfg.model_kwargs),
        "traintest_idx": np.concatenate([splits.train, splits.test]).tolist(),
        "val_idx": splits.val.tolist(),
        "best_epoch": fit.history.best_epoch,
        "n_epochs_run": len(fit.history.records),
    }


def package_versions() -> dict[str, str]:
    """Versions of scnym, torch, numpy, anndata and Python."""
    return {
        "scnym": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "anndata": importlib.metadata.version("anndata"),
        "python": platform.python_version(),
    }


def _data_summary(
    adata: anndata.AnnData, groupby: str, domain_groupby: str | None
) -> dict[str, Any]:
    """Cells, unlabeled cells, cells per class (and per domain) of the training data."""
    labels = adata.obs[groupby].astype(str)
    unlabeled = labels.str.lower() == UNLABELED_TOKEN.lower()
    summary = {
        "n_cells": int(adata.n_obs),
        "n_unlabeled": int(unlabeled.sum()),
        "cells_per_class": {str(k): int(v) for k, v in labels[~unlabeled].value_counts().items()},
        "groupby": groupby,
        "domain_groupby": domain_groupby,
    }
    if domain_groupby is not None:
        summary["cells_per_domain"] = {
            str(k): int(v) for k, v in adata.obs[domain_groupby].astype(str).value_counts().items()
        }
    return summary


def _metrics(fit: FitResult) -> dict[str, Any]:
    """Held-out accuracy and loss, the best epoch and the time per epoch."""
    records = fit.history.records
    return {
        "final_acc": float(fit.final_acc),
        "final_loss": float(fit.final_loss),
        "best_epoch": fit.history.best_epoch,
        "n_epochs_run": len(records),
        "seconds_per_epoch": float(np.median([r.seconds for r in records])) if records else None,
    }


def training_manifest(
    fit: FitResult,
    genes: list[str],
    class_names: list[str],
    cfg: Config,
    input_kind: str,
    adata: anndata.AnnData,
    groupby: str,
    domain_groupby: str | None,
    gene_selection: dict[str, Any] | None,
    calibration: Calibration | None = None,
    novelty: NoveltyFit | None = None,
) -> dict[str, Any]:
    """The manifest of a model directory (JSON serialisable)."""
    threshold = cfg.ssl_kwargs.pseudolabel_min_confidence or None
    if calibration is not None and calibration.confidence_threshold is not None:
        threshold = calibration.confidence_threshold
    return {
        "format_version": MANIFEST_FORMAT,
        "producer": f"scnym {__version__}",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "gene_names": list(genes),
        "class_names": list(class_names),
        "model_kwargs": dataclasses.asdict(cfg.model_kwargs),
        "preprocessing": {
            "input": input_kind,
            "target_sum": TARGET_SUM,
            "log_base": "e",
            "library_size": "all genes of the cell",
            "gene_selection": gene_selection,
        },
        "confidence_threshold": threshold,
        "calibration": calibration.to_dict() if calibration is not None else {},
        "novelty": novelty.summary() if novelty is not None else {},
        "config": cfg.to_dict(),
        "data": _data_summary(adata, groupby, domain_groupby),
        "metrics": _metrics(fit),
        "versions": package_versions(),
    }


def stopping_summary(results: dict[str, Any], n_epochs: int, patience: int) -> str:
    """How training ended: every epoch, or early (and why), and which epoch's weights are kept."""
    run, best = int(results["n_epochs_run"]), int(results["best_epoch"]) + 1
    if run < n_epochs:
        return (
            f"Stopped early after {run} of {n_epochs} epochs: the validation loss had not improved "
            f"for {patience} epochs; the weights of epoch {best} are kept"
        )
    return f"Trained all {n_epochs} epochs; the weights of epoch {best} are kept"
