"""scNym: semi-supervised adversarial cell type annotation.

Submodules load lazily so that ``import scnym.infer`` (torch-free inference)
and ``import scnym.models`` (the model registry) never import torch;
``scnym.api``, ``scnym.model``, ``scnym.trainer``, ``scnym.dataprep`` and
``scnym.interpret`` need the ``train`` extra.
"""

from __future__ import annotations

import importlib

__version__ = "1.0.0.dev0"

_SUBMODULES = {
    "api",
    "cli",
    "commands",
    "config",
    "dataprep",
    "datasets",
    "demo",
    "explain",
    "export",
    "fitting",
    "gene_selection",
    "infer",
    "interpret",
    "labels",
    "losses",
    "manifest",
    "model",
    "modeldir",
    "models",
    "onnx_attribution",
    "plotting",
    "prediction",
    "preprocessing",
    "pretrained",
    "trainer",
}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _SUBMODULES)
