"""The scNym user API on AnnData objects (same names and signatures as scNym 0.3.2).

:func:`scnym_api` trains (:func:`scnym_train`) or predicts
(:func:`scnym_predict`). It reads ``obs[groupby]`` (``'Unlabeled'`` marks target
cells, :mod:`scnym.labels`) and writes the keys named by
:mod:`scnym.infer.contract` (:mod:`scnym.prediction`). Registry models and
atlases (:func:`get_pretrained_weights`, :func:`atlas2target`) come from
:mod:`scnym.pretrained`; the records of a run from :mod:`scnym.manifest`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import anndata
import numpy as np
from scnym.infer.contract import DEFAULT_KEY_ADDED, DEFAULT_MIN_GENE_OVERLAP, TRAIN_RESULTS_KEY
from scnym.infer.preprocessing import (
    check_unique_genes,
    gene_index_map,
    to_log1p_cpm,
)

from .calibration import Calibration, calibrate
from .config import PRESETS, Config, get_config
from .fitting import (
    fit_model,
    resolve_device,
)
from .gene_selection import GeneSelection, select_genes
from .labels import (
    UNLABELED_TOKEN,
    domain_codes,
    label_codes,
    labeled_splits,
)
from .manifest import training_manifest, training_results
from .modeldir import (
    ModelBundle,
    load_model_dir,
    write_model_dir,
)
from .novelty import NoveltyFit, fit_novelty
from .plotting import write_training_log
from .prediction import model_outputs, onnx_file, predict_bundle, predict_onnx
from .pretrained import (
    atlas2target,
    get_pretrained_weights,
    is_registry_model,
)

logger = logging.getLogger(__name__)

TASKS = ("train", "predict")
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


def _check_task_inputs(
    adata: anndata.AnnData, task: str, groupby: str | None, trained_model: str | None
) -> None:
    """Raise when what ``task`` needs is missing: a label column, or a model to predict with."""
    if task == "train" and (groupby is None or groupby not in adata.obs.columns):
        raise ValueError(
            f"groupby={groupby!r} is not a column of adata.obs; pass the column of cell "
            f"type labels (columns: {list(adata.obs.columns)[:10]})"
        )
    if task == "predict" and trained_model is None:
        raise ValueError(
            "task='predict' needs trained_model: a model directory, an ONNX file or a "
            "registry model name (`scnym models list`)"
        )


def scnym_api(
    adata: anndata.AnnData,
    task: str = "train",
    groupby: str | None = None,
    domain_groupby: str | None = None,
    out_path: str = "./scnym_outputs",
    trained_model: str | None = None,
    config: str | dict | Config = "new_identity_discovery",
    key_added: str = DEFAULT_KEY_ADDED,
    copy: bool = False,
    min_gene_overlap: float = DEFAULT_MIN_GENE_OVERLAP,
    unknown_threshold: float | None | Literal["auto"] = "auto",
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
    min_gene_overlap
        Least fraction of the model's genes ``adata`` must hold (predict).
    unknown_threshold
        Threshold of the flag ``obs[key_added + '_unknown']`` (predict; see
        :func:`scnym_predict`); ``'auto'``: the model's; None: no flag.

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
    _check_task_inputs(adata, task, groupby, trained_model)
    if task == "train":
        scnym_train(adata, cfg, groupby=groupby, domain_groupby=domain_groupby,
                    out_path=run.get("out_path", out_path), trained_model=trained_model)  # fmt: skip
    else:
        scnym_predict(adata, cfg, trained_model, key_added, min_gene_overlap, unknown_threshold)
    return adata if copy else None


def _warm_start_bundle(trained_model: str | None) -> ModelBundle | None:
    """The model directory a training run starts from, if any."""
    if trained_model is None:
        return None
    if not Path(trained_model).exists() and is_registry_model(str(trained_model)):
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
    codes, unlabeled, class_names = label_codes(adata, groupby)
    X, input_kind = to_log1p_cpm(adata.X)
    labeled_rows = np.flatnonzero(~unlabeled)
    unlabeled_rows = np.flatnonzero(unlabeled)
    splits = labeled_splits(adata, labeled_rows, cfg)
    # Genes are chosen on the training split only, after normalising over all
    # genes (the library size stays the cell's total).
    train_codes = np.full_like(codes, -1)
    train_codes[splits.train] = codes[splits.train]
    warm = _warm_start_bundle(trained_model)
    selection = _gene_selection(X, train_codes, cfg, warm, adata.var_names)
    X = X[:, selection.columns]
    genes = adata.var_names[selection.columns].astype(str).tolist()
    domain, n_domains = domain_codes(adata, domain_groupby)
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
    results = training_results(out_path, fit, genes, class_names, cfg, splits)
    calibration, novelty = _held_out_fits(fit.model, X, codes, splits)
    if novelty is not None:
        novelty.save(out_path)
    manifest = training_manifest(
        fit, genes, class_names, cfg, input_kind, adata, groupby, domain_groupby, selection.record,
        calibration, novelty,
    )  # fmt: skip
    write_model_dir(out_path, results, manifest)
    write_training_log(fit.history, out_path)
    adata.uns[TRAIN_RESULTS_KEY] = results
    return results


def _held_out_fits(model, X, codes: np.ndarray, splits) -> tuple[Calibration, NoveltyFit | None]:
    """Calibration and the novelty score, fitted on the labeled splits.

    The temperature and the novelty score's scales come from the model-selection
    split, the thresholds and the ECE from the validation split; the novelty
    score's class statistics from the training split.
    """
    fit_logits, _ = model_outputs(model, X[splits.test])
    check_logits, _ = model_outputs(model, X[splits.val])
    train_logits, _ = model_outputs(model, X[splits.train])
    calibration = calibrate(fit_logits, codes[splits.test], check_logits, codes[splits.val])
    novelty = fit_novelty(train_logits, codes[splits.train], fit_logits, check_logits)
    return calibration, novelty


def scnym_predict(
    adata: anndata.AnnData,
    config: str | dict | Config = "new_identity_discovery",
    trained_model: str | None = None,
    key_added: str = DEFAULT_KEY_ADDED,
    min_gene_overlap: float = DEFAULT_MIN_GENE_OVERLAP,
    unknown_threshold: float | None | Literal["auto"] = "auto",
) -> None:
    """Annotate ``adata`` in place with a trained model.

    Writes ``obs[key_added]``, ``obs[key_added + '_confidence']``, the novelty
    score ``obs[key_added + '_novelty']``, the flag ``obs[key_added + '_unknown']``
    (novelty above ``unknown_threshold``, or, for models without the score, confidence
    below it; ``'auto'``: the model's, chosen on held-out reference cells; None: no
    flag), ``uns['scNym_probabilities']`` and ``obsm['X_scnym']``. ``trained_model`` is
    a model directory (torch; the architecture is read from it, not from
    ``config``), an ONNX file written by ``scnym export``, or a registry model
    name (``'pretrained_human'``, ``scnym models list``). ONNX files and
    registry models run torch-free with onnxruntime. Data holding less than
    ``min_gene_overlap`` of the model's genes is refused.
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
    onnx = onnx_file(str(trained_model))
    if onnx is not None:
        predict_onnx(adata, onnx, key_added, cfg.device, min_gene_overlap, unknown_threshold)
        return
    if not Path(trained_model).exists():
        raise FileNotFoundError(
            f"trained_model {trained_model!r} is neither a model directory, an ONNX file nor a "
            "registry model name (see `scnym models list`)"
        )
    bundle = load_model_dir(trained_model, map_location=resolve_device(cfg.device))
    predict_bundle(adata, bundle, key_added, min_gene_overlap, unknown_threshold)


__all__ = [
    "CONFIGS",
    "UNLABELED_TOKEN",
    "atlas2target",
    "get_pretrained_weights",
    "list_configs",
    "scnym_api",
    "scnym_predict",
    "scnym_train",
]
