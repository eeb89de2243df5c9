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
import warnings
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
from .gene_selection import GeneSelection, select_genes
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
#: obs column of ``atlas2target``'s joint object telling atlas cells from target cells.
DATASET_KEY = "scNym_dataset"
#: Fewer shared genes than this between an atlas and the target data raises a warning.
FEW_GENES = 100
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
        What to predict with (predict): a model directory, an ONNX file written by
        ``scnym export``, or a registry model name such as ``'pretrained_human'``
        (``scnym models list``; predicted torch-free with onnxruntime). For train:
        a model directory to warm start from.
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
            raise ValueError(
                "task='predict' needs trained_model: a model directory, an ONNX file or a "
                "registry model name (`scnym models list`)"
            )
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


def _warm_start_bundle(trained_model: str | None) -> ModelBundle | None:
    """The model directory a training run starts from, if any."""
    if trained_model is None:
        return None
    if not Path(trained_model).exists() and _is_registry_model(str(trained_model)):
        raise NotImplementedError(
            f"Cannot warm start from {trained_model!r}: registry models are ONNX files, for "
            "prediction only. Pass a model directory written by task='train'."
        )
    return load_model_dir(trained_model)


def _gene_selection(X, codes, cfg: Config, warm: ModelBundle | None, var_names) -> GeneSelection:
    """The model's genes: a warm start keeps its model's; otherwise ``cfg.gene_selection``."""
    if warm is not None:
        index = gene_index_map(var_names, warm.gene_names)
        if np.any(index < 0):
            missing = [g for g, i in zip(warm.gene_names, index, strict=True) if i < 0][:5]
            raise ValueError(
                f"Cannot warm start from {warm.path}: genes it reads are not in this data "
                f"(e.g. {missing})"
            )
        return GeneSelection(index, {"method": f"genes of the warm-start model {warm.path}"})
    selection = select_genes(X, codes, cfg)
    if selection.record is not None:
        logger.info(
            "Training on %d of %d genes (%s)",
            len(selection.columns),
            X.shape[1],
            cfg.gene_selection,
        )
    return selection


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
    # Genes are chosen on the training split only, after normalising over all
    # genes (the library size stays the cell's total).
    train_codes = np.full_like(codes, -1)
    train_codes[splits.train] = codes[splits.train]
    warm = _warm_start_bundle(trained_model)
    selection = _gene_selection(X, train_codes, cfg, warm, adata.var_names)
    X = X[:, selection.columns]
    genes = adata.var_names[selection.columns].astype(str).tolist()
    domain, n_domains = _domains(adata, domain_groupby)
    if warm is not None and warm.class_names != class_names:
        raise ValueError(
            f"Cannot warm start from {trained_model}: its classes {warm.class_names} differ "
            f"from this data's {class_names}"
        )
    init_state = None if warm is None else warm.model.state_dict()
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
    manifest = _manifest(
        fit, genes, class_names, cfg, input_kind, adata, groupby, domain_groupby, selection.record
    )
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


def _manifest(
    fit, genes, class_names, cfg, input_kind, adata, groupby, domain_groupby, gene_selection
):
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
            "gene_selection": gene_selection,
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
    """Annotate ``adata`` in place with a trained model.

    Writes ``obs[key_added]``, ``obs[key_added + '_confidence']``,
    ``uns['scNym_probabilities']`` and ``obsm['X_scnym']``. ``trained_model`` is
    a model directory (torch; the architecture is read from it, not from
    ``config``), an ONNX file written by ``scnym export``, or a registry model
    name (``'pretrained_human'``, ``scnym models list``). ONNX files and
    registry models run torch-free with onnxruntime; they refuse data holding
    less than half of the model's genes.
    """
    config, run = _split_run_keys(config)
    trained_model = run.get("trained_model", run.get("model_weights", trained_model))
    key_added = run.get("key_added", key_added)
    cfg = get_config(config)
    if trained_model is None:
        raise ValueError(
            "scnym_predict needs trained_model: a model directory, an ONNX file or a registry "
            "model name"
        )
    check_unique_genes(adata.var_names)
    onnx_file = _onnx_file(str(trained_model))
    if onnx_file is not None:
        _predict_onnx(adata, onnx_file, key_added, cfg.device)
        return
    if not Path(trained_model).exists():
        raise FileNotFoundError(
            f"trained_model {trained_model!r} is neither a model directory, an ONNX file nor a "
            "registry model name (see `scnym models list`)"
        )
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
    _write_predictions(adata, probs, embedding, bundle.class_names, key_added)


def _write_predictions(adata, probs, embedding, class_names, key_added: str) -> None:
    """Write the prediction keys (the same for the torch and the ONNX paths)."""
    classes = np.asarray(class_names)
    adata.obs[key_added] = pd.Categorical(
        classes[probs.argmax(axis=1)], categories=list(class_names)
    )
    adata.obs[f"{key_added}_confidence"] = probs.max(axis=1).astype(np.float32)
    adata.uns["scNym_probabilities"] = pd.DataFrame(
        probs, columns=list(class_names), index=adata.obs_names
    )
    adata.obsm["X_scnym"] = embedding.astype(np.float32)


def _is_registry_model(name: str) -> bool:
    """Whether ``name`` names a model of the registry (``pretrained_*`` always counts)."""
    if name.startswith("pretrained_"):
        return True
    if "/" in name or os.sep in name:
        return False
    from scnym.models import load_registry

    return load_registry().find(name, kind="model") is not None


def _onnx_file(trained_model: str) -> Path | None:
    """The ONNX file to predict with, when ``trained_model`` is one or names a registry model."""
    path = Path(trained_model)
    if path.is_file() and path.suffix == ".onnx":
        return path
    if not path.exists() and _is_registry_model(trained_model):
        return Path(get_pretrained_weights(trained_model))
    return None


def _predict_onnx(adata: anndata.AnnData, path: Path, key_added: str, device: str) -> None:
    """Predict torch-free with onnxruntime (``scnym.infer``), writing the usual keys."""
    from scnym.infer import OnnxModel, predict_matrix
    from scnym.infer.model import resolve_providers

    device = str(device)
    ort_device = "auto" if device == "auto" else "cuda" if device.startswith("cuda") else "cpu"
    model = OnnxModel(path, providers=resolve_providers(ort_device))
    result = predict_matrix(model, adata.X, adata.var_names)
    cov = result.coverage
    logger.info(
        "Found %d of %d model genes in the data (%.1f%% of counts); predicting with %s",
        cov.n_found, cov.n_model_genes, 100 * cov.counts_fraction, path,
    )  # fmt: skip
    _write_predictions(adata, result.probabilities, result.embedding, result.classes, key_added)


def get_pretrained_weights(trained_model: str, out_path: str = "./scnym_outputs") -> str:
    """Resolve a registry model name to its verified ONNX file.

    Unlike scNym 0.3.2, which downloaded a torch state dict into ``out_path``,
    registry models are ONNX files written by ``scnym export``: shipped with
    scnym or downloaded once into the cache (``$SCNYM_CACHE``, default
    ``~/.cache/scnym``), and checked against the registry's sha256 before use.
    Pass the returned path (or the name itself) as ``trained_model`` to predict.

    Parameters
    ----------
    trained_model
        A registry model name or alias; ``'pretrained_{species}'`` finds the
        first model of that species (``scnym models list``).
    out_path
        Accepted for compatibility with 0.3.2; nothing is written there.

    Returns
    -------
    The path of the verified ``.onnx`` file.

    Raises
    ------
    scnym.models.RegistryError
        For an unknown name (the message lists the models), or a download that
        fails (the message lists the models available offline).
    scnym.models.ChecksumError
        When the file differs from the registry's sha256.
    """
    from scnym.models import resolve

    return str(resolve(trained_model, kind="model"))


def atlas2target(
    adata: anndata.AnnData, species: str, key_added: str = "annotations"
) -> anndata.AnnData:
    """Join a registry reference atlas with ``adata``, ready to train on both.

    Atlas cells keep their labels in ``obs[key_added]``; the cells of ``adata``
    get ``'Unlabeled'`` (the target). ``obs['scNym_dataset']`` tells them apart
    (``'atlas_reference'`` / ``'target'``); obs names get a ``-atlas_reference``
    / ``-target`` suffix. Only the genes the two share are kept. ``X`` is
    log1p(CPM) throughout: raw counts of ``adata`` are normalised over all of
    each cell's genes before the gene subset. Other ``obs`` columns of both are
    kept (missing values NaN), as 0.3.2's ``AnnData.concatenate`` did. ``adata``
    itself is left untouched (0.3.2 wrote the two columns into it).

    Parameters
    ----------
    adata
        The target cells (raw counts or log1p(CPM)), unique gene names.
    species
        ``'human'``, ... (the registry atlas aliased ``atlas_{species}``, else the
        first atlas of that species), or the name of a registry atlas.
    key_added
        ``obs`` column of the labels (pass it as ``groupby`` to train).

    Returns
    -------
    The joint AnnData (atlas cells first); ``uns['scNym_atlas']`` records the
    atlas, its sha256 and the gene overlap.

    Raises
    ------
    scnym.models.RegistryError
        For a species or name without an atlas in the registry.
    ValueError
        For duplicate gene names or data that is neither counts nor log1p(CPM).
    RuntimeError
        When the atlas and ``adata`` share no genes.

    Examples
    --------
    >>> joint = atlas2target(adata, species="human")  # doctest: +SKIP
    >>> scnym_api(joint, task="train", groupby="annotations",
    ...           domain_groupby="scNym_dataset", out_path="model")  # doctest: +SKIP
    """
    from scnym.models import load_registry, resolve

    registry = load_registry()
    entry = registry.find(species, kind="atlas") or registry.get(f"atlas_{species}", "atlas")
    check_unique_genes(adata.var_names)
    atlas = anndata.read_h5ad(resolve(entry.name, registry, kind="atlas"))
    if entry.label_key not in atlas.obs.columns:
        raise ValueError(
            f"Atlas {entry.name!r} has no obs column {entry.label_key!r} (registry label_key)"
        )
    check_unique_genes(atlas.var_names)
    reference = anndata.AnnData(
        X=to_log1p_cpm(atlas.X)[0], obs=atlas.obs.copy(), var=atlas.var.copy()
    )
    reference.obs[key_added] = atlas.obs[entry.label_key].astype(str).to_numpy()
    reference.obs[DATASET_KEY] = "atlas_reference"
    target_X, target_kind = to_log1p_cpm(adata.X)  # library size over all genes of each cell
    target = anndata.AnnData(X=target_X, obs=adata.obs.copy(), var=adata.var.copy())
    target.obs[key_added] = UNLABELED_TOKEN
    target.obs[DATASET_KEY] = "target"
    shared = reference.var_names[reference.var_names.isin(target.var_names)]
    if len(shared) == 0:
        raise RuntimeError(
            f"The atlas {entry.name!r} ({entry.species}, {entry.gene_id_type} gene ids, e.g. "
            f"{list(atlas.var_names[:3])}) shares no genes with adata (e.g. "
            f"{list(adata.var_names[:3])}): check the species and the gene identifiers."
        )
    if len(shared) < FEW_GENES:
        warnings.warn(
            f"Only {len(shared)} genes are shared between the atlas {entry.name!r} and adata; "
            "annotations from so few genes are unreliable.",
            stacklevel=2,
        )
    logger.info(
        "atlas2target: %d of %d atlas genes are in adata (%d genes)",
        len(shared), atlas.n_vars, adata.n_vars,
    )  # fmt: skip
    # Both parts hold the same genes in the same order, so the outer join keeps
    # the obs columns of both while the genes are the intersection.
    joint = anndata.concat(
        {"atlas_reference": reference[:, shared], "target": target[:, shared]},
        join="outer",
        index_unique="-",
        merge="same",
    )
    for key in (key_added, DATASET_KEY):
        joint.obs[key] = pd.Categorical(joint.obs[key].astype(str))
    joint.uns["scNym_atlas"] = {
        "name": entry.name,
        "file": str(entry.file),
        "sha256": entry.sha256,
        "label_key": entry.label_key,
        "n_shared_genes": len(shared),
        "n_atlas_genes": int(atlas.n_vars),
        "n_target_genes": int(adata.n_vars),
        "target_input": target_kind,
    }
    return joint
