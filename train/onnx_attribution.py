"""Saliency of exported (ONNX) models: finite differences through onnxruntime.

Gradients need the torch weights of a model directory; an ONNX file (or a
registry model) holds the forward computation only, with the class
probabilities as output. :class:`OnnxAttribution` differentiates numerically
what those probabilities define: the log-odds of a class against the others.
No torch is needed.
"""

from __future__ import annotations

import numpy as np
from scnym.infer.model import OnnxModel
from scnym.infer.preprocessing import TARGET_SUM

#: Step in log1p(CPM) units of the central differences.
FD_STEP = 1e-3
#: Genes perturbed per onnxruntime call (each gives two rows: +step and -step).
FD_GENE_BLOCK = 1024


def log_odds(probabilities: np.ndarray, index: int) -> np.ndarray:
    """``log p_k - log sum_{j != k} p_j`` of each row: the class logit against the others.

    Unlike a single logit it is defined by the probabilities alone; the sum over the
    other classes is taken directly (not as ``1 - p_k``), so it stays exact for
    confident cells. Rows where it is not finite (probabilities that underflowed)
    come back NaN.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    rest = np.delete(probabilities, index, axis=1).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.log(probabilities[:, index]) - np.log(rest)
    values[~np.isfinite(values)] = np.nan
    return values


class OnnxAttribution:
    """Saliency of an exported model by central finite differences through onnxruntime.

    ONNX files hold the forward computation only, with the class probabilities as
    output: the fallback differentiates the class's log-odds (:func:`log_odds`),
    ``(f(x + h e_g) - f(x - h e_g)) / 2h`` for every gene ``g`` of every cell, with
    ``h`` = :data:`FD_STEP` in log1p(CPM) units and the library size held fixed.
    This costs two rows per gene and cell (4,000 genes: 8,000 model rows a cell).
    Guided backpropagation and integrated gradients need the torch weights.

    Parameters
    ----------
    model
        The exported model (``input_mode`` ``'counts'`` or ``'log1p_cpm'``).
    step
        The finite-difference step ``h``.
    """

    #: The output each method attributes (saliency only).
    outputs = {"saliency": "log_odds"}

    def __init__(self, model: OnnxModel, step: float = FD_STEP) -> None:
        self.model = model
        self.step = step

    @property
    def gene_names(self) -> list[str]:
        return list(self.model.genes)

    @property
    def class_names(self) -> list[str]:
        return list(self.model.classes)

    def _model_scale(self, X: np.ndarray) -> np.ndarray:
        """log1p(CPM) rows as the model reads them: log1p(counts per its target sum)."""
        if self.model.target_sum == TARGET_SUM:
            return X
        return np.log1p(np.expm1(X) * (self.model.target_sum / TARGET_SUM)).astype(np.float32)

    def _probabilities(self, x: np.ndarray) -> np.ndarray:
        if self.model.input_mode == "counts":
            # With total = target sum, the graph's log1p(counts * target / total) gives x back.
            totals = np.full(len(x), self.model.target_sum, dtype=np.float32)
            return self.model.run(np.expm1(x), total_counts=totals).probabilities
        return self.model.run(x).probabilities

    def probabilities(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities of log1p(CPM) rows in the model's gene order."""
        return self._probabilities(self._model_scale(np.asarray(X, dtype=np.float32)))

    @classmethod
    def check_method(cls, method: str) -> None:
        """Raise :class:`NotImplementedError` for a method an ONNX model cannot run."""
        if method not in cls.outputs:
            raise NotImplementedError(
                f"method {method!r} needs the model's torch weights: an ONNX file (or a "
                "registry model) holds the forward computation only. Pass the model "
                "directory it was exported from, or use method 'saliency' (finite "
                "differences through onnxruntime)."
            )

    def attribute(self, X: np.ndarray, index: int, method: str) -> tuple[np.ndarray, np.ndarray]:
        """Finite-difference saliency ``[cells, genes]`` of class ``index``'s log-odds.

        The second array says each cell is complete (always: no integration here).

        Raises
        ------
        NotImplementedError
            For ``guided`` and ``integrated_gradients``.
        """
        self.check_method(method)
        X = self._model_scale(np.asarray(X, dtype=np.float32))
        saliency = np.stack([self._cell_saliency(cell, index) for cell in X])
        return saliency, np.ones(len(X), dtype=bool)

    def _cell_saliency(self, cell: np.ndarray, index: int) -> np.ndarray:
        out = np.empty(len(cell), dtype=np.float32)
        for start in range(0, len(cell), FD_GENE_BLOCK):
            genes = np.arange(start, min(start + FD_GENE_BLOCK, len(cell)))
            n = len(genes)
            rows = np.repeat(cell[None], 2 * n, axis=0)
            rows[np.arange(n), genes] += self.step
            rows[n + np.arange(n), genes] -= self.step
            step = rows[np.arange(n), genes] - rows[n + np.arange(n), genes]  # float32's own
            values = log_odds(self._probabilities(rows), index)
            out[genes] = (values[:n] - values[n:]) / step
        return out
