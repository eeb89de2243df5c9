"""Torch-free annotation with exported scNym models (onnxruntime only).

:func:`annotate` streams an AnnData store (zarr v2/v3 or h5ad, local or an
fsspec URL) block by block through an ONNX model written by ``scnym export``
and writes ``obs[key_added]``, ``obs[key_added + '_confidence']`` and
``obsm['X_scnym']`` back. :func:`predict_matrix` classifies a matrix already in
memory (an AnnData's ``X``) with the same gene mapping. :class:`OnnxModel`
runs a model on arrays.
"""

from .memory import MatrixPrediction, predict_matrix
from .model import OnnxModel, read_metadata
from .streaming import AnnotationResult, annotate

__all__ = [
    "AnnotationResult",
    "MatrixPrediction",
    "OnnxModel",
    "annotate",
    "predict_matrix",
    "read_metadata",
]
