"""Export trained scNym models to self-describing ONNX files.

The ONNX file is the only contract between training and production: it holds
the graph (normalisation included) and, in its metadata, the genes, classes,
preprocessing, training summary and versions, under the names of
:mod:`scnym.infer.contract`. Read it back with
:func:`scnym.infer.model.read_metadata` (onnxruntime only).

The public names load on first use: they need torch, which ``scnym inspect``
(in :mod:`.commands`, beside ``scnym export``) does not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scnym.infer.lazy import lazy_exports

#: Public name -> the module that defines it.
_EXPORTS = {
    "ExportReport": "exporter",
    "ParityError": "exporter",
    "export_model": "exporter",
    "DEFAULT_OPSET": "graph",
    "ScnymGraph": "graph",
}

__all__ = ["DEFAULT_OPSET", "ExportReport", "ParityError", "ScnymGraph", "export_model"]

if TYPE_CHECKING:
    from .exporter import ExportReport, ParityError, export_model
    from .graph import DEFAULT_OPSET, ScnymGraph

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
