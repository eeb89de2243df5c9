"""Prediction on AnnData with a torch model directory or an ONNX file.

Both paths write the same keys, named by :mod:`scnym.infer.contract`:
``obs[key_added]``, ``obs[key_added + '_confidence']``,
``uns['scNym_probabilities']`` and ``obsm['X_scnym']``. ONNX files and registry
models run torch-free with onnxruntime (:mod:`scnym.infer`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import torch
from scnym.infer.contract import PROBABILITIES_UNS_KEY, ResultKeys
from scnym.infer.preprocessing import align_genes, gene_index_map, to_log1p_cpm

from .fitting import EVAL_BATCH_SIZE
from .modeldir import ModelBundle
from .pretrained import get_pretrained_weights, is_registry_model

logger = logging.getLogger(__name__)


@torch.no_grad()
def predict_arrays(
    bundle: ModelBundle, X, batch_size: int = EVAL_BATCH_SIZE
) -> tuple[np.ndarray, np.ndarray]:
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


def write_predictions(
    adata: anndata.AnnData,
    probs: np.ndarray,
    embedding: np.ndarray,
    class_names: Sequence[str],
    key_added: str,
) -> None:
    """Write the prediction keys (the same for the torch and the ONNX paths)."""
    keys = ResultKeys(key_added)
    classes = np.asarray(class_names)
    adata.obs[keys.label] = pd.Categorical(
        classes[probs.argmax(axis=1)], categories=list(class_names)
    )
    adata.obs[keys.confidence] = probs.max(axis=1).astype(np.float32)
    adata.uns[PROBABILITIES_UNS_KEY] = pd.DataFrame(
        probs, columns=list(class_names), index=adata.obs_names
    )
    adata.obsm[keys.embedding] = embedding.astype(np.float32)


def predict_bundle(adata: anndata.AnnData, bundle: ModelBundle, key_added: str) -> None:
    """Predict with a loaded model directory, writing the prediction keys.

    Raises
    ------
    ValueError
        When none of the model's genes are in ``adata.var_names``.
    """
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
    write_predictions(adata, probs, embedding, bundle.class_names, key_added)


def onnx_file(trained_model: str) -> Path | None:
    """The ONNX file to predict with, when ``trained_model`` is one or names a registry model."""
    path = Path(trained_model)
    if path.is_file() and path.suffix == ".onnx":
        return path
    if not path.exists() and is_registry_model(trained_model):
        return Path(get_pretrained_weights(trained_model))
    return None


def predict_onnx(adata: anndata.AnnData, path: Path, key_added: str, device: str) -> None:
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
    write_predictions(adata, result.probabilities, result.embedding, result.classes, key_added)
