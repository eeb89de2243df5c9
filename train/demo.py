"""The bundled end-to-end example: train, export, annotate a store torch-free, report.

Label transfer from control to IFN-beta stimulated PBMCs (Kang et al. 2018, the
2,000 cells of :func:`scnym.datasets.kang_pbmc_small`): the control cells are
labelled, the stimulated ones are given to training unlabelled, then written as a
zarr store and annotated by the exported ONNX model through :mod:`scnym.infer`.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
from scnym.infer.contract import DEFAULT_KEY_ADDED, EMBEDDING_KEY, TRAIN_RESULTS_KEY, ResultKeys

from .api import UNLABELED_TOKEN, scnym_api
from .config import get_config
from .datasets import kang_pbmc_small
from .interpret import rank_genes
from .manifest import stopping_summary
from .plotting import (
    CURVES_FILE,
    dotplot_tables,
    plot_confusion_matrix,
    plot_dotplot,
    plot_embedding,
)

MODEL_DIR = "model"
ONNX_FILE = "model.onnx"
STORE = "stim.zarr"
REPORT_DIR = "report"
#: Cells explained per predicted type in the report's saliency dot plot.
SALIENCY_CELLS = 100


@dataclass
class DemoResult:
    """Scores and paths of a demo run (``adata``: the stimulated cells, annotated)."""

    accuracy: float
    balanced_accuracy: float
    recall: pd.Series
    gene_fraction: float
    cells_per_s: float
    agreement_with_torch: float
    train_seconds: float
    out_path: Path
    training_summary: str = ""
    report: dict[str, Path] = field(default_factory=dict)
    adata: anndata.AnnData | None = None
    novelty: dict = field(default_factory=dict)


def _training_summary(adata: anndata.AnnData, config: dict) -> str:
    """How the demo's training ended (all epochs, or early)."""
    final = get_config(config)
    return stopping_summary(adata.uns[TRAIN_RESULTS_KEY], final.n_epochs, final.patience)


def recall_per_class(truth: np.ndarray, pred: np.ndarray) -> pd.Series:
    """Fraction of each true class predicted correctly."""
    classes = np.unique(truth)
    return pd.Series({c: float(np.mean(pred[truth == c] == c)) for c in classes})


def run_demo(
    out_path: str | Path = "scnym_demo",
    config: str | dict = "new_identity_discovery",
    n_epochs: int | None = None,
    progress: bool = True,
    leave_out: str | None = None,
) -> DemoResult:
    """Train on the bundled control cells, export, annotate the stimulated cells, report.

    Writes into ``out_path``: the model directory (``model/``), the ONNX file
    (``model.onnx``), the stimulated cells as a zarr store annotated in place
    (``stim.zarr``) and a ``report/`` folder with the training curves, a confusion
    matrix, a 2-D view of ``X_scnym``, a saliency dot plot (:func:`write_saliency`)
    and ``summary.json``.

    Parameters
    ----------
    out_path
        Folder for everything the demo writes (replaced if it holds a former demo).
    config
        Preset name or dict of overrides.
    n_epochs
        Override the number of epochs (the preset's 100 by default).
    progress
        Show progress bars.
    leave_out
        A cell type removed from the labeled control cells: the reference lacks it,
        and the report measures how well the novelty score finds its stimulated
        cells (``result.novelty``, ``summary.json``).

    Returns
    -------
    The scores on the stimulated cells, as annotated from the store.
    """
    from .export import export_model
    from .infer import annotate

    out = Path(out_path)
    out.mkdir(parents=True, exist_ok=True)
    adata = _without_reference_type(kang_pbmc_small(), leave_out)
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    target = adata.obs["condition"].to_numpy() == "stim"
    adata.obs["label"] = np.where(target, UNLABELED_TOKEN, truth)
    if isinstance(config, str):
        config = {"preset": config}
    if n_epochs is not None:
        config = {**config, "n_epochs": n_epochs}

    start = time.perf_counter()
    model_dir = out / MODEL_DIR
    scnym_api(adata, task="train", groupby="label", out_path=str(model_dir), config=config)
    train_seconds = time.perf_counter() - start
    scnym_api(adata, task="predict", trained_model=str(model_dir))  # X_scnym of both conditions

    onnx_path = out / ONNX_FILE
    export_model(model_dir, onnx_path, check=adata[target][:500])

    store = _write_query_store(out / STORE, adata, target)
    annotation = annotate(store, onnx_path, progress=progress)

    pred = annotation.labels.astype(str)
    recall = recall_per_class(truth[target], pred)
    annotated = anndata.read_zarr(store)
    annotated.obs["cell_type"] = truth[target]
    torch_pred = adata.obs[DEFAULT_KEY_ADDED].astype(str).to_numpy()[target]
    result = DemoResult(
        accuracy=float(np.mean(pred == truth[target])),
        balanced_accuracy=float(recall.mean()),
        recall=recall,
        gene_fraction=annotation.coverage.gene_fraction,
        cells_per_s=annotation.cells_per_s,
        agreement_with_torch=float(np.mean(pred == torch_pred)),
        train_seconds=train_seconds,
        out_path=out,
        training_summary=_training_summary(adata, config),
        adata=annotated,
        novelty=novelty_summary(annotated.obs, truth[target], leave_out),
    )
    result.report = write_report(out / REPORT_DIR, model_dir, adata, annotated, result)
    return result


def _write_query_store(store: Path, adata: anndata.AnnData, target: np.ndarray) -> Path:
    """The target cells' counts as a zarr store (no labels, no torch predictions)."""
    if store.exists():
        shutil.rmtree(store)
    query = anndata.AnnData(adata.X[target], obs=adata.obs.loc[target, ["condition"]])
    query.var_names = adata.var_names
    query.write_zarr(store)
    return store


def _without_reference_type(adata: anndata.AnnData, leave_out: str | None) -> anndata.AnnData:
    """``adata`` without the control cells of ``leave_out`` (checked to be a type)."""
    if leave_out is None:
        return adata
    types = adata.obs["cell_type"].astype(str)
    if leave_out not in set(types):
        raise ValueError(f"--leave-out {leave_out!r} is not a cell type of the demo data: "
                         f"{sorted(set(types))}")  # fmt: skip
    reference = adata.obs["condition"].to_numpy() != "stim"
    return adata[~(reference & (types.to_numpy() == leave_out))].copy()


def novelty_summary(obs: pd.DataFrame, truth: np.ndarray, leave_out: str | None) -> dict:
    """Shares of cells flagged; with ``leave_out``, its AUROC and flagged share vs the rest."""
    keys = ResultKeys(DEFAULT_KEY_ADDED)
    if keys.novelty not in obs:
        return {}
    flagged = obs[keys.unknown].to_numpy(dtype=bool)
    summary = {"flagged": float(flagged.mean())}
    novel = truth == leave_out
    if leave_out is not None and novel.any():
        from sklearn.metrics import roc_auc_score

        score = obs[keys.novelty].to_numpy(dtype=float)
        counted = ~np.isnan(score)
        summary.update(
            left_out=leave_out,
            auroc=float(roc_auc_score(novel[counted], score[counted])),
            left_out_flagged=float(flagged[novel].mean()),
            known_flagged=float(flagged[~novel].mean()),
        )
    return summary


def write_report(
    folder: Path,
    model_dir: Path,
    adata: anndata.AnnData,
    annotated: anndata.AnnData,
    result: DemoResult,
) -> dict[str, Path]:
    """Training curves, confusion matrix, 2-D embedding view, saliency and a JSON summary.

    ``adata`` holds both conditions with the torch model's ``X_scnym`` and
    prediction; ``annotated`` the stimulated cells as annotated from the store.
    """
    truth = annotated.obs["cell_type"].astype(str).to_numpy()
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "training_curves": folder / CURVES_FILE,
        "confusion_matrix": folder / "confusion_matrix.png",
        "embedding": folder / "embedding.png",
        "summary": folder / "summary.json",
    }
    shutil.copyfile(model_dir / CURVES_FILE, paths["training_curves"])
    plot_confusion_matrix(
        truth, annotated.obs[DEFAULT_KEY_ADDED].astype(str), paths["confusion_matrix"]
    )
    colours = {key: adata.obs[key].astype(str).to_numpy() for key in ("cell_type", "condition")}
    keys = ResultKeys(DEFAULT_KEY_ADDED)
    scores = {keys.novelty: adata.obs[keys.novelty]} if keys.novelty in adata.obs else {}
    plot_embedding(adata.obsm[EMBEDDING_KEY], colours, paths["embedding"], scores=scores)
    stimulated = adata[adata.obs["condition"].to_numpy() == "stim"].copy()
    paths.update(write_saliency(folder, model_dir, stimulated))
    summary = {
        "accuracy": result.accuracy,
        "balanced_accuracy": result.balanced_accuracy,
        "recall": result.recall.round(4).to_dict(),
        "gene_fraction": result.gene_fraction,
        "cells_per_s": result.cells_per_s,
        "agreement_with_torch": result.agreement_with_torch,
        "train_seconds": result.train_seconds,
        "n_query_cells": int(len(truth)),
        "novelty": result.novelty,
    }
    paths["summary"].write_text(json.dumps(summary, indent=1))
    return paths


def write_saliency(
    folder: Path, model_dir: Path, query: anndata.AnnData, progress: bool = False
) -> dict[str, Path]:
    """Which genes made the model call each type: saliency of the cells by predicted type.

    Writes ``saliency_genes.csv`` (the top 20 genes of each type) and
    ``saliency_dotplot.png`` (the top 5 of each, their expression by type).
    """
    paths = {"saliency_genes": folder / "saliency_genes.csv",
             "saliency_dotplot": folder / "saliency_dotplot.png"}  # fmt: skip
    table = rank_genes(query, model_dir, DEFAULT_KEY_ADDED, n_genes=20,
                       cells_per_group=SALIENCY_CELLS, progress=progress)  # fmt: skip
    table.to_csv(paths["saliency_genes"], index=False)
    plot_dotplot(
        *dotplot_tables(query, table, DEFAULT_KEY_ADDED),
        paths["saliency_dotplot"],
        title="Stimulated cells by predicted type: the genes that made the call (saliency)",
    )
    return paths
