"""The scNym user API on AnnData objects (same names and signatures as scNym 0.3.2).

This is the only module that knows the AnnData keys scNym reads and writes:
``obs[groupby]`` (``'Unlabeled'`` marks target cells), ``obs[key_added]``,
``obs[key_added + '_confidence']``, ``obsm['X_scnym']``,
``uns['scNym_probabilities']`` and ``uns['scNym_train_results']``.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import logging
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anndata
import numpy as np
import pandas as pd
import torch

from . import __version__
from .config import PRESETS, Config, get_config
from .fitting import EVAL_BATCH_SIZE, FitResult, Splits, fit_model, make_splits, resolve_device
from .modeldir import (
    MANIFEST_FORMAT,
    WEIGHTS_FILE,
    ModelBundle,
    load_model_dir,
    write_model_dir,
)
from .plotting import write_training_log
from .preprocessing import (
    TARGET_SUM,
    align_genes,
    check_unique_genes,
    gene_index_map,
    to_log1p_cpm,
)

logger = logging.getLogger(__name__)

UNLABELED_TOKEN = "Unlabeled"
TASKS = ("train", "predict")
#: Fewest labeled cells that can be split into train / model-selection / validation sets.
MIN_LABELED_CELLS = 20
#: obs column that fixes the train/test/val split of labeled cells when present.
SPLIT_KEY = "scNym_split"
#: Keys of an original-style config dict that describe the run, not the model.
RUN_KEYS = ("groupby", "domain_groupby", "out_path", "trained_model", "model_weights", "key_added")

#: The presets as plain dicts (built afresh; editing them changes nothing).
CONFIGS: dict[str, dict[str, Any]] = {name: make().to_dict() for name, make in PRESETS.items()}


def list_configs() -> dict[str, str]:
    """Return the preset names with their descriptions (and log them)."""
    descriptions = {name: make().description for name, make in PRESETS.items()}
    for name, text in descriptions.items():
        logger.info("%s: %s", name, text)
    return descriptions


def _split_run_keys(config) -> tuple[Any, dict[str, Any]]:
    """Separate run keys (groupby, out_path, ...) from model/training keys of a dict config."""
    if not isinstance(config, Mapping):
        return config, {}
    config = dict(config)
    run = {key: config.pop(key) for key in RUN_KEYS if key in config}
    return config, run


def scnym_api(
    adata: anndata.AnnData,
    task: str = "train",
    groupby: str | None = None,
    domain_groupby: str | None = None,
    out_path: str = "./scnym_outputs",
    trained_model: str | None = None,
    config: str | dict | Config = "new_identity_discovery",
    key_added: str = "scNym",
    copy: bool = False,
) -> anndata.AnnData | None:
    """Train an scNym model or predict cell types with one.

    Parameters
    ----------
    adata
        Cells x genes, ``X`` holding raw counts or log1p(CPM).
    task
        ``'train'`` or ``'predict'``.
    groupby
        ``obs`` column of cell type labels (train); ``'Unlabeled'`` marks target
        cells used as unlabeled data.
    domain_groupby
        ``obs`` column of domains (batches, conditions) for the adversary.
    out_path
        Folder the model directory is written to (train).
    trained_model
        Model directory to predict with (predict) or to warm start from (train).
    config
        A preset name (:func:`list_configs`), a JSON file, a dict of overrides or
        a :class:`~scnym.config.Config`.
    key_added
        ``obs`` key of the predicted labels.
    copy
        Work on (and return) a copy of ``adata``, leaving the input untouched.

    Returns
    -------
    The annotated copy if ``copy``, else None (``adata`` is updated in place).

    Examples
    --------
    >>> from scnym.api import scnym_api
    >>> from scnym.datasets import kang_pbmc_small
    >>> adata = kang_pbmc_small()
    >>> adata.obs["label"] = adata.obs["cell_type"].astype(str)
    >>> adata.obs.loc[adata.obs["condition"] == "stim", "label"] = "Unlabeled"
    >>> scnym_api(adata, task="train", groupby="label", out_path="model",
    ...           config={"n_epochs": 2})  # doctest: +SKIP
    >>> scnym_api(adata, task="predict", trained_model="model")  # doctest: +SKIP
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {task!r}")
    config, run = _split_run_keys(config)
    cfg = get_config(config)
    if copy:
        adata = adata.copy()
    device = resolve_device(cfg.device)
    logger.info("scNym computes on %s", device)
    check_unique_genes(adata.var_names)
    if task == "train":
        if groupby is None or groupby not in adata.obs.columns:
            raise ValueError(
                f"groupby={groupby!r} is not a column of adata.obs; pass the column of cell "
                f"type labels (columns: {list(adata.obs.columns)[:10]})"
            )
        scnym_train(
            adata,
            cfg,
            groupby=groupby,
            domain_groupby=domain_groupby,
            out_path=run.get("out_path", out_path),
            trained_model=trained_model,
        )
    else:
        if trained_model is None:
            raise ValueError("task='predict' needs trained_model: a model directory")
        scnym_predict(adata, cfg, trained_model=trained_model, key_added=key_added)
    return adata if copy else None


def _labels(adata: anndata.AnnData, groupby: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Return (codes with -1 for unlabeled, unlabeled mask, sorted class names)."""
    column = adata.obs[groupby]
    if column.isna().any():
        raise ValueError(
            f"obs[{groupby!r}] has {int(column.isna().sum())} missing labels; "
            f"mark target cells with {UNLABELED_TOKEN!r} instead"
        )
    labels = column.astype(str).to_numpy()
    unlabeled = labels == UNLABELED_TOKEN
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


def _splits(adata: anndata.AnnData, labeled_rows: np.ndarray, cfg: Config) -> Splits:
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


def _domains(adata: anndata.AnnData, domain_groupby: str | None) -> tuple[np.ndarray | None, int]:
    if domain_groupby is None:
        return None, 2
    if domain_groupby not in adata.obs.columns:
        raise ValueError(f"domain_groupby={domain_groupby!r} is not a column of adata.obs")
    values = adata.obs[domain_groupby].astype(str).to_numpy()
    names = np.unique(values)
    codes = pd.Categorical(values, categories=names).codes.astype(np.int64)
    return codes, max(len(names), 2)


def _warm_start_state(trained_model: str | None, genes: list[str], classes: list[str]):
    if trained_model is None:
        return None
    if "pretrained_" in str(trained_model):
        get_pretrained_weights(trained_model)
    bundle = load_model_dir(trained_model)
    if bundle.gene_names != genes or bundle.class_names != classes:
        raise ValueError(
            f"Cannot warm start from {trained_model}: its genes/classes differ from this data"
        )
    return bundle.model.state_dict()


def scnym_train(
    adata: anndata.AnnData,
    config: str | dict | Config = "new_identity_discovery",
    groupby: str | None = None,
    domain_groupby: str | None = None,
    out_path: str = "./scnym_outputs",
    trained_model: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a model on ``adata`` and write its model directory to ``out_path``.

    The run keys (``groupby``, ``out_path``, ``domain_groupby``,
    ``trained_model``) may also be given inside a dict ``config``, as the
    original scNym did.

    Returns
    -------
    The results dict, also stored in ``adata.uns['scNym_train_results']``.
    """
    config, run = _split_run_keys(config)
    groupby = run.get("groupby", groupby)
    domain_groupby = run.get("domain_groupby", domain_groupby)
    out_path = run.get("out_path", out_path)
    trained_model = run.get("trained_model", trained_model)
    cfg = get_config(config)
    if groupby is None or groupby not in adata.obs.columns:
        raise ValueError(f"groupby={groupby!r} is not a column of adata.obs")
    check_unique_genes(adata.var_names)
    codes, unlabeled, class_names = _labels(adata, groupby)
    X, input_kind = to_log1p_cpm(adata.X)
    labeled_rows = np.flatnonzero(~unlabeled)
    unlabeled_rows = np.flatnonzero(unlabeled)
    splits = _splits(adata, labeled_rows, cfg)
    domain, n_domains = _domains(adata, domain_groupby)
    genes = adata.var_names.astype(str).tolist()
    init_state = _warm_start_state(trained_model, genes, class_names)
    if len(unlabeled_rows) == 0:
        logger.info("No %r cells: proceeding with purely supervised training", UNLABELED_TOKEN)
    os.makedirs(out_path, exist_ok=True)
    fit = fit_model(
        X,
        codes,
        n_classes=len(class_names),
        splits=splits,
        config=cfg,
        unlabeled_rows=unlabeled_rows if len(unlabeled_rows) else None,
        domain=domain,
        n_domains=n_domains,
        out_path=out_path,
        init_state=init_state,
        progress=progress,
    )
    results = _results(out_path, fit, genes, class_names, cfg, splits)
    manifest = _manifest(fit, genes, class_names, cfg, input_kind, adata, groupby, domain_groupby)
    write_model_dir(out_path, results, manifest)
    write_training_log(fit.history, out_path)
    adata.uns["scNym_train_results"] = results
    return results


def _results(out_path, fit: FitResult, genes, class_names, cfg: Config, splits: Splits):
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


def _versions() -> dict[str, str]:
    return {
        "scnym": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "anndata": importlib.metadata.version("anndata"),
        "python": platform.python_version(),
    }


def _manifest(fit, genes, class_names, cfg, input_kind, adata, groupby, domain_groupby):
    labels = adata.obs[groupby].astype(str)
    summary = {
        "n_cells": int(adata.n_obs),
        "n_unlabeled": int((labels == UNLABELED_TOKEN).sum()),
        "cells_per_class": {
            str(k): int(v) for k, v in labels[labels != UNLABELED_TOKEN].value_counts().items()
        },
        "groupby": groupby,
        "domain_groupby": domain_groupby,
    }
    if domain_groupby is not None:
        summary["cells_per_domain"] = {
            str(k): int(v) for k, v in adata.obs[domain_groupby].astype(str).value_counts().items()
        }
    records = fit.history.records
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
        },
        "confidence_threshold": cfg.ssl_kwargs.pseudolabel_min_confidence or None,
        "config": cfg.to_dict(),
        "data": summary,
        "metrics": {
            "final_acc": float(fit.final_acc),
            "final_loss": float(fit.final_loss),
            "best_epoch": fit.history.best_epoch,
            "n_epochs_run": len(records),
            "seconds_per_epoch": float(np.median([r.seconds for r in records]))
            if records
            else None,
        },
        "versions": _versions(),
    }


@torch.no_grad()
def predict_arrays(bundle: ModelBundle, X, batch_size: int = EVAL_BATCH_SIZE):
    """Probabilities and embeddings of log1p(CPM) rows already in the model's gene order."""
    device = next(bundle.model.parameters()).device
    probs, embeds = [], []
    for start in range(0, X.shape[0], batch_size):
        block = X[start : start + batch_size]
        block = block.toarray() if hasattr(block, "toarray") else np.asarray(block)
        logits, embedding = bundle.model(
            torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)).to(device),
            return_embed=True,
        )
        probs.append(torch.softmax(logits, dim=1).cpu().numpy())
        embeds.append(embedding.cpu().numpy())
    return np.concatenate(probs), np.concatenate(embeds)


def scnym_predict(
    adata: anndata.AnnData,
    config: str | dict | Config = "new_identity_discovery",
    trained_model: str | None = None,
    key_added: str = "scNym",
) -> None:
    """Annotate ``adata`` in place with a trained model directory.

    Writes ``obs[key_added]``, ``obs[key_added + '_confidence']``,
    ``uns['scNym_probabilities']`` and ``obsm['X_scnym']``. The architecture is
    read from the model directory (not from ``config``).
    """
    config, run = _split_run_keys(config)
    trained_model = run.get("trained_model", run.get("model_weights", trained_model))
    key_added = run.get("key_added", key_added)
    cfg = get_config(config)
    if trained_model is None:
        raise ValueError("scnym_predict needs trained_model: a model directory")
    if "pretrained_" in str(trained_model) and not Path(trained_model).exists():
        get_pretrained_weights(trained_model)
    if not Path(trained_model).exists():
        raise FileNotFoundError(f"trained_model {trained_model} does not exist")
    check_unique_genes(adata.var_names)
    bundle = load_model_dir(trained_model, map_location=resolve_device(cfg.device))
    found = gene_index_map(adata.var_names, bundle.gene_names) >= 0
    if not found.any():
        raise ValueError(
            f"None of the model's {len(bundle.gene_names)} genes are in adata.var_names "
            f"(model genes start {bundle.gene_names[:3]}, data {list(adata.var_names[:3])}); "
            "check the gene identifiers (symbols vs Ensembl IDs) and the species."
        )
    logger.info("Found %d of %d model genes in the data", int(found.sum()), len(found))
    X, _ = to_log1p_cpm(adata.X)
    X = align_genes(X, adata.var_names, bundle.gene_names)
    probs, embedding = predict_arrays(bundle, X)
    classes = np.asarray(bundle.class_names)
    adata.obs[key_added] = pd.Categorical(
        classes[probs.argmax(axis=1)], categories=bundle.class_names
    )
    adata.obs[f"{key_added}_confidence"] = probs.max(axis=1).astype(np.float32)
    adata.uns["scNym_probabilities"] = pd.DataFrame(
        probs, columns=bundle.class_names, index=adata.obs_names
    )
    adata.obsm["X_scnym"] = embedding.astype(np.float32)


def get_pretrained_weights(trained_model: str, out_path: str = "./scnym_outputs") -> str:
    """Resolve a pretrained model name (``'pretrained_human'``, ...) to a model directory.

    Raises
    ------
    NotImplementedError
        Pretrained models arrive with the model registry (issue #7, ``models/``).
    """
    raise NotImplementedError(
        f"Pretrained model {trained_model!r} is not available yet: the offline model registry "
        "(models/, issue #7) is not built. Train a model with scnym_api(task='train')."
    )


def atlas2target(
    adata: anndata.AnnData, species: str, key_added: str = "annotations"
) -> anndata.AnnData:
    """Join a reference atlas of ``species`` with ``adata`` (target cells ``'Unlabeled'``).

    Raises
    ------
    NotImplementedError
        Reference atlases arrive with the model registry (issue #7, ``models/``).
    """
    raise NotImplementedError(
        f"No reference atlas for {species!r} yet: atlases come with the offline model "
        "registry (models/, issue #7)."
    )
