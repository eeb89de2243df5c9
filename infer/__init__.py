"""Torch-free annotation with exported scNym models (onnxruntime only): the base layer.

:func:`annotate` streams an AnnData store (zarr v2/v3 or h5ad, local or an
fsspec URL) block by block through an ONNX model written by ``scnym export``
and writes ``obs[key_added]``, ``obs[key_added + '_confidence']`` and
``obsm['X_scnym']`` back. :func:`predict_matrix` classifies a matrix already in
memory (an AnnData's ``X``) with the same gene mapping. :class:`OnnxModel`
runs a model on arrays.

Everything else in scnym may use this package; it uses nothing of training,
export or the registry. Its public names load on first use, so that its light
modules (:mod:`.contract`, :mod:`.fileio`, :mod:`.preprocessing`) import without
onnxruntime or anndata.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_exports

#: Public name -> the module that defines it.
_EXPORTS = {
    "AnnotationResult": "result",
    "annotate": "annotation",
    "MatrixPrediction": "memory",
    "predict_matrix": "memory",
    "OnnxModel": "model",
    "read_metadata": "model",
}

__all__ = [
    "AnnotationResult",
    "MatrixPrediction",
    "OnnxModel",
    "annotate",
    "predict_matrix",
    "read_metadata",
]

if TYPE_CHECKING:
    from .annotation import annotate
    from .memory import MatrixPrediction, predict_matrix
    from .model import OnnxModel, read_metadata
    from .result import AnnotationResult

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
