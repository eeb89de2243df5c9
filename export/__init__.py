"""Export trained scNym models to self-describing ONNX files.

The ONNX file is the only contract between training and production: it holds
the graph (normalisation included) and, in its metadata, the genes, classes,
preprocessing, training summary and versions. Read it back with
:func:`scnym.infer.model.read_metadata` (onnxruntime only).
"""

from .exporter import ExportReport, ParityError, export_model
from .graph import DEFAULT_OPSET, ScnymGraph

__all__ = ["DEFAULT_OPSET", "ExportReport", "ParityError", "ScnymGraph", "export_model"]
