"""The metadata an exported model carries: everything a consumer needs, as JSON values."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import onnx
import torch
from scnym import __version__
from scnym.infer.contract import (
    DIGEST_KEY,
    FORMAT_VERSION,
    META_PREFIX,
    gene_id_type,
    metadata_digest,
)
from scnym.infer.preprocessing import TARGET_SUM
from scnym.modeldir import ModelBundle


def weights_sha256(model: torch.nn.Module) -> str:
    """Hash of the state dict's names and values (independent of file format)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(tensor.detach().cpu().numpy()).tobytes())
    return digest.hexdigest()


def build_metadata(
    bundle: ModelBundle, input_mode: str, precision: str, opset: int
) -> dict[str, Any]:
    """Collect the metadata of an export from the model directory's manifest."""
    manifest = bundle.manifest
    preprocessing = manifest.get("preprocessing", {})
    config = manifest.get("config", {})
    threshold = bundle.confidence_threshold
    genes = list(bundle.gene_names)
    return {
        "format_version": FORMAT_VERSION,
        "genes": genes,
        "gene_id_type": gene_id_type(genes),
        "classes": list(bundle.class_names),
        "preprocessing": {
            "input_mode": input_mode,
            "target_sum": float(preprocessing.get("target_sum", TARGET_SUM)),
            "log_base": "e",
            "library_size": "total counts over all genes of the cell (input total_counts)",
            "training_input": preprocessing.get("input", "log1p_cpm"),
            "gene_selection": preprocessing.get("gene_selection"),
        },
        "model_kwargs": manifest.get("model_kwargs", {}),
        "training": {"config": config, "data": manifest.get("data", {})},
        "metrics": manifest.get("metrics", {}),
        "calibration": manifest.get("calibration", {}),
        "novelty": bundle.novelty.summary() if bundle.novelty is not None else {},
        "confidence_threshold": threshold,
        "producer": {
            "name": "scnym",
            "version": __version__,
            "trained_by": manifest.get("producer"),
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "opset": opset,
            "versions_at_training": manifest.get("versions", {}),
        },
        "precision": precision,
        "created": manifest.get("created"),
        "weights_sha256": weights_sha256(bundle.model),
        "io": {
            "inputs": (
                {"counts": "[cells, genes] raw counts in gene order", "total_counts": "[cells]"}
                if input_mode == "counts"
                else {"log1p_cpm": "[cells, genes] log1p(CPM) in gene order"}
            ),
            "outputs": {
                "probabilities": "[cells, classes]",
                "embedding": "[cells, hidden] (obsm['X_scnym'])",
                "predicted_class": "[cells] index into classes",
                **(
                    {"novelty": "[cells] novelty score (obs['scNym_novelty'])"}
                    if bundle.novelty is not None
                    else {}
                ),
            },
        },
    }


def attach_metadata(proto: onnx.ModelProto, metadata: dict[str, Any]) -> onnx.ModelProto:
    """Write ``metadata`` into ``proto.metadata_props`` (sorted keys, JSON values), sealed.

    The digest of all of it (:func:`scnym.infer.contract.metadata_digest`) is added
    under ``metadata_sha256``; readers refuse a file whose metadata no longer matches.
    """
    metadata = {**metadata, DIGEST_KEY: metadata_digest(metadata)}
    del proto.metadata_props[:]
    for key in sorted(metadata):
        entry = proto.metadata_props.add()
        entry.key = META_PREFIX + key
        entry.value = json.dumps(metadata[key], sort_keys=True)
    return proto
