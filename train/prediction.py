"""Prediction on AnnData with a torch model directory or an ONNX file.

Both paths write the same keys, named by :mod:`scnym.infer.contract`:
``obs[key_added]``, ``obs[key_added + '_confidence']``,
``uns['scNym_probabilities']`` and ``obsm['X_scnym']``. ONNX files and registry
models run torch-free with onnxruntime (:mod:`scnym.infer`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import anndata
import numpy as np
import torch
from scnym.infer.contract import DEFAULT_MIN_GENE_OVERLAP
from scnym.infer.memory import predict_adata, write_prediction
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


def predict_bundle(
    adata: anndata.AnnData,
    bundle: ModelBundle,
    key_added: str,
    min_gene_overlap: float = DEFAULT_MIN_GENE_OVERLAP,
) -> None:
    """Predict with a loaded model directory, writing the prediction keys.

    Raises
    ------
    ValueError
        When ``adata`` holds less than ``min_gene_overlap`` of the model's genes
        (or none of them).
    """
    found = gene_index_map(adata.var_names, bundle.gene_names) >= 0
    if not found.any() or found.mean() < min_gene_overlap:
        raise ValueError(
            f"Only {int(found.sum())} of the model's {len(bundle.gene_names)} genes "
            f"({found.mean():.1%}) are in adata.var_names (minimum {min_gene_overlap:.0%}; "
            f"model genes start {bundle.gene_names[:3]}, data {list(adata.var_names[:3])}): "
            "check the gene identifiers (symbols vs Ensembl IDs) and the species, or lower "
            "min_gene_overlap (--min-gene-overlap) to proceed anyway."
        )
    logger.info("Found %d of %d model genes in the data", int(found.sum()), len(found))
    X, _ = to_log1p_cpm(adata.X)
    empty = np.asarray(X.sum(axis=1)).ravel() <= 0
    X = align_genes(X, adata.var_names, bundle.gene_names)
    probs, embedding = predict_arrays(bundle, X)
    write_prediction(
        adata, probs, embedding, bundle.class_names, key_added, empty, bundle.confidence_threshold
    )


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
) -> None:
    """Predict torch-free with onnxruntime (:func:`scnym.infer.memory.predict_adata`)."""
    predict_adata(adata, path, key_added, device, min_gene_overlap)
