"""What an annotation run returns: its obs columns, coverage and timing, as tables or an AnnData."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anndata
import numpy as np
import onnxruntime as ort
import pandas as pd
from scnym import __version__

from .blocks import GeneCoverage
from .contract import ANNOTATE_RECORD_KEY, DEFAULT_KEY_ADDED, ResultKeys
from .model import OnnxModel


def run_record(
    model_name: str,
    model: OnnxModel,
    coverage: GeneCoverage,
    input_kind: str,
    layer: str | None,
    threshold: float | None,
) -> dict[str, Any]:
    """What a run did, kept in ``uns['scNym_annotate']`` (or beside a table output)."""
    return {
        "model": model_name,
        "weights_sha256": model.metadata.get("weights_sha256"),
        "classes": model.classes,
        "gene_coverage": coverage.gene_fraction,
        "n_model_genes_found": coverage.n_found,
        "counts_fraction": coverage.counts_fraction,
        "input_kind": input_kind,
        "layer": layer,
        "unknown_threshold": threshold,
        "novelty_score": model.has_novelty,
        "scnym": __version__,
        "onnxruntime": ort.__version__,
        "providers": model.session.get_providers(),
    }


@dataclass
class AnnotationResult:
    """The result of :func:`scnym.infer.annotate`, in the row order of the data.

    Attributes
    ----------
    columns
        The obs columns as written, by name: ``key_added`` (categorical; missing
        for cells without counts), ``key_added + '_confidence'``, the novelty
        score ``key_added + '_novelty'`` (models exported with it) and, where a
        threshold applies, the bool flag ``key_added + '_unknown'``.
    coverage
        How many of the model's genes the data holds.
    n_cells, seconds
        Cells annotated and the run's wall time.
    written_to
        Where the results went (the store, the output, or ``'the AnnData'``).
    record
        What the run did, as kept in ``uns['scNym_annotate']``.
    key_added
        The name the columns derive from.
    embedding, probabilities
        ``[cells, hidden]`` and ``[cells, classes]`` arrays for an in-memory
        AnnData; None for a store, where they are written out of core (read them
        from ``obsm``).
    """

    columns: dict[str, Any]
    coverage: GeneCoverage
    n_cells: int
    seconds: float
    written_to: str
    record: dict = field(default_factory=dict)
    key_added: str = DEFAULT_KEY_ADDED
    embedding: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    obs_names_source: Callable[[], pd.Index] | None = field(default=None, repr=False)

    @property
    def labels(self) -> np.ndarray:
        """The predicted cell type of each cell (an object array; NaN without counts)."""
        return np.asarray(self.columns[ResultKeys(self.key_added).label])

    @property
    def confidence(self) -> np.ndarray:
        """The probability of each predicted type (float32; NaN without counts)."""
        return np.asarray(self.columns[ResultKeys(self.key_added).confidence])

    @property
    def novelty(self) -> np.ndarray | None:
        """The novelty score of each cell (NaN without counts; None for older models)."""
        values = self.columns.get(ResultKeys(self.key_added).novelty)
        return None if values is None else np.asarray(values)

    @property
    def unknown(self) -> np.ndarray | None:
        """The flag of each cell (bool; None when no threshold applied)."""
        values = self.columns.get(ResultKeys(self.key_added).unknown)
        return None if values is None else np.asarray(values, dtype=bool)

    @property
    def cells_per_s(self) -> float:
        return self.n_cells / max(self.seconds, 1e-9)

    @property
    def obs_names(self) -> pd.Index:
        """The cells' names (read from the data when it is a store)."""
        if self.obs_names_source is None:
            return pd.RangeIndex(self.n_cells).astype(str)
        return self.obs_names_source()

    def to_df(self) -> pd.DataFrame:
        """The obs columns, indexed by the cells' names."""
        return pd.DataFrame(self.columns, index=self.obs_names)

    def to_adata(self) -> anndata.AnnData:
        """An AnnData of the results: the obs columns, the arrays held and the record."""
        keys = ResultKeys(self.key_added)
        obsm = {
            name: values
            for name, values in ((keys.embedding, self.embedding),
                                 (keys.probabilities, self.probabilities))
            if values is not None
        }  # fmt: skip
        record = {k: v for k, v in self.record.items() if v is not None}  # uns holds no None
        return anndata.AnnData(obs=self.to_df(), obsm=obsm, uns={ANNOTATE_RECORD_KEY: record})
