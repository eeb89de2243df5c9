"""Prediction on AnnData with a torch model directory or an ONNX file.

Both paths write the same keys, named by :mod:`scnym.infer.contract`:
``obs[key_added]``, ``obs[key_added + '_confidence']``,
``uns['scNym_probabilities']`` and ``obsm['X_scnym']``. ONNX files and registry
models run torch-free with onnxruntime (:mod:`scnym.infer`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import anndata
import numpy as np
import torch
from scipy.special import softmax
from scnym.infer.contract import DEFAULT_MIN_GENE_OVERLAP
from scnym.infer.memory import model_inputs, predict_adata, write_prediction

from .fitting import EVAL_BATCH_SIZE
from .modeldir import ModelBundle
from .novelty import NoveltyScorer
from .pretrained import get_pretrained_weights, is_registry_model

logger = logging.getLogger(__name__)


@torch.no_grad()
def model_outputs(
    model: torch.nn.Module, X, batch_size: int = EVAL_BATCH_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and embeddings of log1p(CPM) rows already in the model's gene order."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    logits, embeds = [], []
    for start in range(0, X.shape[0], batch_size):
        block = X[start : start + batch_size]
        block = block.toarray() if hasattr(block, "toarray") else np.asarray(block)
        out, embedding = model(
            torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)).to(device),
            return_embed=True,
        )
        logits.append(out.cpu().numpy())
        embeds.append(embedding.cpu().numpy())
    model.train(was_training)
    return np.concatenate(logits), np.concatenate(embeds)


def _calibrated(bundle: ModelBundle, logits: np.ndarray) -> np.ndarray:
    """Probabilities at the model's temperature."""
    return softmax(logits / bundle.temperature, axis=1).astype(np.float32)


def predict_arrays(
    bundle: ModelBundle, X, batch_size: int = EVAL_BATCH_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated probabilities (the model's temperature) and embeddings of log1p(CPM) rows
    already in the model's gene order."""
    logits, embedding = model_outputs(bundle.model, X, batch_size)
    return _calibrated(bundle, logits), embedding


def predict_bundle(
    adata: anndata.AnnData,
    bundle: ModelBundle,
    key_added: str,
    min_gene_overlap: float = DEFAULT_MIN_GENE_OVERLAP,
    unknown_threshold: float | None | Literal["auto"] = "auto",
) -> None:
    """Predict with a loaded model directory, writing the prediction keys.

    ``unknown_threshold``: the flag's threshold (novelty scale; confidence for models
    trained without the score); ``'auto'``: the model's.

    Raises
    ------
    ValueError
        When ``adata`` holds less than ``min_gene_overlap`` of the model's genes
        (or none of them).
    """
    X, _ = model_inputs(adata, bundle.gene_names, min_gene_overlap=min_gene_overlap)
    empty = np.asarray(X.sum(axis=1)).ravel() <= 0  # no counts in the model's genes
    logits, embedding = model_outputs(bundle.model, X)
    fit = bundle.novelty
    if fit is None:
        logger.warning(
            "%s was trained without the novelty score: cells are flagged by confidence alone",
            bundle.path,
        )
    novelty = None if fit is None else NoveltyScorer(fit).score(logits)
    threshold = bundle.confidence_threshold if fit is None else fit.threshold
    if unknown_threshold != "auto":
        threshold = unknown_threshold
    write_prediction(
        adata, _calibrated(bundle, logits), embedding, bundle.class_names, key_added, empty,
        threshold, novelty,
    )  # fmt: skip


def onnx_file(trained_model: str) -> Path | None:
    """The ONNX file to predict with, when ``trained_model`` is one or names a registry model."""
    path = Path(trained_model)
    if path.is_file() and path.suffix == ".onnx":
        return path
    if not path.exists() and is_registry_model(trained_model):
        return Path(get_pretrained_weights(trained_model))
    return None


def predict_onnx(
    adata: anndata.AnnData,
    path: Path,
    key_added: str,
    device: str,
    min_gene_overlap: float = DEFAULT_MIN_GENE_OVERLAP,
    unknown_threshold: float | None | Literal["auto"] = "auto",
) -> None:
    """Predict torch-free with onnxruntime (:func:`scnym.infer.memory.predict_adata`)."""
    predict_adata(adata, path, key_added, device, min_gene_overlap,
                  unknown_threshold=unknown_threshold)  # fmt: skip
