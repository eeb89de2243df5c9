"""Run an exported model on a matrix already in memory (an AnnData's ``X``), torch-free.

The same checks and encoding as streaming annotation: :func:`plan_blocks`
checks the genes and the kind of data (raw counts or log1p(CPM)), and
:class:`BlockEncoder` maps each block of rows onto the model's genes (missing
genes are zero; each cell's total is taken over all its genes).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import anndata
import numpy as np
import pandas as pd
from scipy import sparse
from tqdm.auto import tqdm

from .blocks import DEFAULT_MIN_GENE_OVERLAP, BlockEncoder, GeneCoverage, plan_blocks
from .contract import DEFAULT_KEY_ADDED, PROBABILITIES_UNS_KEY, ResultKeys
from .model import OnnxModel, resolve_providers
from .store import DEFAULT_BLOCK_ROWS, StoreReader

logger = logging.getLogger(__name__)


@dataclass
class MatrixPrediction:
    """Outputs of a model on every row of a matrix.

    Attributes
    ----------
    probabilities
        ``[cells, classes]`` float32.
    embedding
        ``[cells, hidden]`` float32 (``obsm['X_scnym']``).
    classes
        Class names, in the order of the probability columns.
    coverage
        How many of the model's genes the matrix holds.
    input_kind
        ``'counts'`` or ``'log1p_cpm'``, as detected.
    empty
        The cells without counts, which get no label.
    """

    probabilities: np.ndarray
    embedding: np.ndarray
    classes: list[str]
    coverage: GeneCoverage
    input_kind: str
    empty: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        """The most probable class of each cell (None for cells without counts)."""
        labels = np.asarray(self.classes, dtype=object)[self.probabilities.argmax(axis=1)]
        labels[self.empty] = None
        return labels

    @property
    def confidence(self) -> np.ndarray:
        """The probability of the predicted class (float32; NaN for cells without counts)."""
        return np.where(self.empty, np.nan, self.probabilities.max(axis=1)).astype(np.float32)


def predict_matrix(
    model: OnnxModel | str | os.PathLike,
    X,
    var_names: Sequence[str],
    batch_size: int = DEFAULT_BLOCK_ROWS,
    min_gene_overlap: float = DEFAULT_MIN_GENE_OVERLAP,
    progress: bool = False,
) -> MatrixPrediction:
    """Classify the rows of ``X`` (cells x genes) with an exported model.

    Parameters
    ----------
    model
        An :class:`OnnxModel` or the path of an ``.onnx`` file.
    X
        Raw counts or log1p(CPM), dense or sparse, in memory.
    var_names
        Gene identifiers of ``X``'s columns (matched to the model's by name).
    batch_size
        Rows classified at a time.
    min_gene_overlap
        Least fraction of the model's genes ``X`` must hold.
    progress
        Show a progress bar.

    Raises
    ------
    ValueError
        For duplicate gene names, data that is neither counts nor log1p(CPM),
        or a gene overlap below ``min_gene_overlap``.
    """
    if not isinstance(model, OnnxModel):
        model = OnnxModel(model)
    if sparse.issparse(X) and X.format != "csr":
        X = sparse.csr_matrix(X)
    elif not sparse.issparse(X):
        X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != len(var_names):
        raise ValueError(f"X has shape {X.shape} but {len(var_names)} gene names were given")
    reader = StoreReader(
        location="the data", root=None, matrix=X, var_names=pd.Index(var_names).astype(str),
        n_obs=X.shape[0], chunk_rows=1, is_sparse=sparse.issparse(X), writable=False,
    )  # fmt: skip
    plan = plan_blocks(reader, model, batch_size, min_gene_overlap)
    encoder = BlockEncoder(plan)
    outputs: dict[str, list[np.ndarray]] = {"probabilities": [], "embedding": [], "empty": []}
    with tqdm(total=reader.n_obs, unit="cells", desc="Annotating", disable=not progress) as bar:
        for start, stop in plan.bounds:
            out = encoder.run(model, reader.read_rows(start, stop), start)
            for key, parts in outputs.items():
                parts.append(out[key])
            bar.update(stop - start)
    joined = {key: np.concatenate(parts) for key, parts in outputs.items()}
    return MatrixPrediction(
        joined["probabilities"],
        joined["embedding"],
        list(model.classes),
        plan.coverage,
        plan.input_kind,
        joined["empty"],
    )


def write_prediction(
    adata: anndata.AnnData,
    probabilities: np.ndarray,
    embedding: np.ndarray,
    classes: Sequence[str],
    key_added: str = DEFAULT_KEY_ADDED,
    empty: np.ndarray | None = None,
) -> None:
    """Write in-memory prediction's keys into ``adata`` (torch and ONNX models alike).

    ``obs[key_added]`` (categorical over the model's classes; missing for the
    ``empty`` cells, which hold no counts), ``obs[key_added + '_confidence']`` (NaN
    for those), ``uns['scNym_probabilities']`` (cells x classes) and ``obsm['X_scnym']``.
    """
    keys = ResultKeys(key_added)
    empty = np.zeros(len(probabilities), dtype=bool) if empty is None else np.asarray(empty)
    codes = np.where(empty, -1, probabilities.argmax(axis=1))
    adata.obs[keys.label] = pd.Categorical.from_codes(codes, categories=list(classes))
    adata.obs[keys.confidence] = np.where(empty, np.nan, probabilities.max(axis=1)).astype(
        np.float32
    )
    adata.uns[PROBABILITIES_UNS_KEY] = pd.DataFrame(
        probabilities, columns=list(classes), index=adata.obs_names
    )
    adata.obsm[keys.embedding] = embedding.astype(np.float32)
    if empty.any():
        logger.warning("%d cells hold no counts: they get no label", int(empty.sum()))


def predict_adata(
    adata: anndata.AnnData,
    model: str | os.PathLike,
    key_added: str = DEFAULT_KEY_ADDED,
    device: str = "auto",
) -> MatrixPrediction:
    """Annotate an in-memory AnnData with an exported model, torch-free.

    Parameters
    ----------
    adata
        Raw counts or log1p(CPM) in ``X``.
    model
        The ``.onnx`` file.
    key_added
        Name of the label column.
    device
        ``'auto'``, ``'cpu'`` or ``'cuda'`` (torch spellings such as ``'cuda:0'`` too).
    """
    device = str(device)
    ort_device = "auto" if device == "auto" else "cuda" if device.startswith("cuda") else "cpu"
    onnx_model = OnnxModel(model, providers=resolve_providers(ort_device))
    result = predict_matrix(onnx_model, adata.X, adata.var_names)
    cov = result.coverage
    logger.info(
        "Found %d of %d model genes in the data (%.1f%% of counts); predicting with %s",
        cov.n_found, cov.n_model_genes, 100 * cov.counts_fraction, model,
    )  # fmt: skip
    write_prediction(
        adata, result.probabilities, result.embedding, result.classes, key_added, result.empty
    )
    return result
