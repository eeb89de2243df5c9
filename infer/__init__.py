"""Torch-free annotation with exported scNym models (onnxruntime only).

:func:`annotate` streams an AnnData store (zarr v2/v3 or h5ad, local or an
fsspec URL) block by block through an ONNX model written by ``scnym export``
and writes ``obs[key_added]``, ``obs[key_added + '_confidence']`` and
``obsm['X_scnym']`` back. :class:`OnnxModel` runs a model on arrays.
"""

from .model import OnnxModel, read_metadata
from .streaming import AnnotationResult, annotate

__all__ = ["AnnotationResult", "OnnxModel", "annotate", "read_metadata"]
