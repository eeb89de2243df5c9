"""Run an exported model on a matrix already in memory (an AnnData's ``X``), torch-free.

The same checks and encoding as streaming annotation: :func:`plan_blocks`
checks the genes and the kind of data (raw counts or log1p(CPM)), and
:class:`BlockEncoder` maps each block of rows onto the model's genes (missing
genes are zero; each cell's total is taken over all its genes).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import anndata
import numpy as np
import pandas as pd
from scipy import sparse
from tqdm.auto import tqdm

from .blocks import BlockEncoder, GeneCoverage, plan_blocks
from .contract import (
    ANNOTATE_RECORD_KEY,
    DEFAULT_KEY_ADDED,
    DEFAULT_MIN_GENE_OVERLAP,
    PROBABILITIES_UNS_KEY,
    RAW_LAYER,
    ResultKeys,
)
from .guards import check_key_added, check_keys, check_output, keys_in_record, keys_to_write
from .model import OnnxModel, resolve_model, resolve_providers, warn_without_novelty
from .preprocessing import align_genes, gene_index_map, to_log1p_cpm
from .result import AnnotationResult, run_record
from .settings import AnnotateSettings
from .store import DEFAULT_BLOCK_ROWS, StoreReader
from .writer import obs_columns, wide_keys, write_output

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
    novelty
        Each cell's novelty score (None for models exported without it).
    """

    probabilities: np.ndarray
    embedding: np.ndarray
    classes: list[str]
    coverage: GeneCoverage
    input_kind: str
    empty: np.ndarray
    novelty: np.ndarray | None = None

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
    alternatives: Sequence[str] = (),
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
    alternatives
        Other matrices of the data, named in the error when ``X`` is refused.

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
        alternatives=tuple(alternatives),
    )  # fmt: skip
    plan = plan_blocks(reader, model, batch_size, min_gene_overlap)
    encoder = BlockEncoder(plan)
    outputs: dict[str, list[np.ndarray]] = {"probabilities": [], "embedding": [], "empty": []}
    if model.has_novelty:
        outputs["novelty"] = []
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
        joined.get("novelty"),
    )


def write_prediction(
    adata: anndata.AnnData,
    probabilities: np.ndarray,
    embedding: np.ndarray,
    classes: Sequence[str],
    key_added: str = DEFAULT_KEY_ADDED,
    empty: np.ndarray | None = None,
    unknown_threshold: float | None = None,
    novelty: np.ndarray | None = None,
) -> None:
    """Write in-memory prediction's keys into ``adata`` (torch and ONNX models alike).

    The obs columns of :func:`scnym.infer.annotate` (``obs[key_added]``, its
    ``_confidence``, the ``_novelty`` score where the model has one and, with a
    threshold, the bool ``_unknown`` flag; no label for the ``empty`` cells,
    which hold no counts), ``uns['scNym_probabilities']`` (cells x classes, as
    scNym 0.3.2 wrote it) and ``obsm['X_scnym']``.
    """
    empty = np.zeros(len(probabilities), dtype=bool) if empty is None else np.asarray(empty)
    columns = obs_columns(
        probabilities.argmax(axis=1), probabilities.max(axis=1).astype(np.float32), empty,
        list(classes), key_added, unknown_threshold, novelty,
    )  # fmt: skip
    for name, values in columns.items():
        adata.obs[name] = values
    adata.uns[PROBABILITIES_UNS_KEY] = pd.DataFrame(
        probabilities, columns=list(classes), index=adata.obs_names
    )
    adata.obsm[ResultKeys(key_added).embedding] = embedding.astype(np.float32)
    # the record that makes these keys scNym's (annotate replaces them only then)
    planned = keys_to_write(
        key_added, ("embedding",), unknown_threshold is not None, novelty is not None
    )
    earlier = keys_in_record(adata.uns.get(ANNOTATE_RECORD_KEY))
    record = {"by": "predict", "key_added": key_added, "classes": list(classes),
              "unknown_threshold": unknown_threshold, "written": planned.as_record(earlier)}  # fmt: skip
    adata.uns[ANNOTATE_RECORD_KEY] = {k: v for k, v in record.items() if v is not None}
    if empty.any():
        logger.warning(
            "%d cells hold no counts in the model's genes: they get no label", int(empty.sum())
        )


def predict_adata(
    adata: anndata.AnnData,
    model: str | os.PathLike,
    key_added: str = DEFAULT_KEY_ADDED,
    device: str = "auto",
    min_gene_overlap: float = DEFAULT_MIN_GENE_OVERLAP,
    threads: int | None = None,
    unknown_threshold: float | None | Literal["auto"] = "auto",
) -> MatrixPrediction:
    """Annotate an in-memory AnnData with an exported model, torch-free.

    Parameters
    ----------
    adata
        Raw counts or log1p(CPM) in ``X``.
    model
        The ``.onnx`` file, or a registry model name.
    key_added
        Name of the label column.
    device
        ``'auto'``, ``'cpu'`` or ``'cuda'`` (torch spellings such as ``'cuda:0'`` too).
    min_gene_overlap
        Least fraction of the model's genes ``adata`` must hold.
    threads
        onnxruntime intra-op threads.
    unknown_threshold
        The flag's threshold (see :func:`scnym.infer.annotate`); ``'auto'``: the model's.
    """
    onnx_model = OnnxModel(
        resolve_model(model), providers=resolve_providers(device), threads=threads
    )
    warn_without_novelty(onnx_model)
    result = predict_matrix(
        onnx_model, adata.X, adata.var_names, min_gene_overlap=min_gene_overlap,
        alternatives=alternatives_of(adata, None),
    )  # fmt: skip
    cov = result.coverage
    logger.info(
        "Found %d of %d model genes in the data (%.1f%% of counts); predicting with %s",
        cov.n_found, cov.n_model_genes, 100 * cov.counts_fraction, model,
    )  # fmt: skip
    write_prediction(
        adata, result.probabilities, result.embedding, result.classes, key_added, result.empty,
        onnx_model.unknown_threshold if unknown_threshold == "auto" else unknown_threshold,
        result.novelty,
    )  # fmt: skip
    return result


def matrix_of(adata: anndata.AnnData, layer: str | None, gene_key: str | None):
    """(matrix, gene names) of ``X``, ``layers[layer]`` or, for ``'raw'``, ``adata.raw``.

    Raises
    ------
    ValueError
        For a missing layer or gene key (naming what there is).
    """
    var = adata.var
    if layer is None:
        X = adata.X
    elif layer in adata.layers:
        X = adata.layers[layer]
    elif layer == RAW_LAYER and adata.raw is not None:
        X, var = adata.raw.X, adata.raw.var
    else:
        raw = " (and no adata.raw)" if layer == RAW_LAYER else ""
        raise ValueError(f"The AnnData has no layer {layer!r}{raw}; layers: {list(adata.layers)}")
    if gene_key is None:
        return X, var.index.astype(str)
    if gene_key not in var.columns:
        raise ValueError(
            f"--gene-key {gene_key!r} is not a var column; columns: {list(var.columns)}"
        )
    return X, pd.Index(var[gene_key].astype(str))


def alternatives_of(adata: anndata.AnnData, layer: str | None) -> list[str]:
    """The matrices of ``adata`` other than ``layer`` that ``--layer`` could read."""
    raw = [RAW_LAYER] if adata.raw is not None and layer != RAW_LAYER else []
    return [key for key in [*adata.layers.keys(), *raw] if key != layer]


def annotate_adata(adata: anndata.AnnData, settings: AnnotateSettings) -> AnnotationResult:
    """:func:`scnym.infer.annotate` on an AnnData in memory: the same checks, keys and record."""
    start = time.perf_counter()
    output = settings.output_path
    check_output(output, None, settings.overwrite)
    check_key_added(settings.key_added)
    X, var_names = matrix_of(adata, settings.layer, settings.gene_key)
    model = OnnxModel(
        resolve_model(settings.model), providers=resolve_providers(settings.device),
        threads=settings.threads,
    )  # fmt: skip
    warn_without_novelty(model)
    threshold = settings.threshold(model)
    wide = wide_keys(output, settings.write_probabilities)
    planned = keys_to_write(settings.key_added, wide, threshold is not None, model.has_novelty)
    earlier = {} if output is not None else keys_in_record(adata.uns.get(ANNOTATE_RECORD_KEY))
    if output is None:
        present = {"obs": set(adata.obs.columns), "obsm": set(adata.obsm.keys())}
        planned = check_keys("The AnnData", present, earlier, planned)
    prediction = predict_matrix(
        model, X, var_names, settings.batch_size or DEFAULT_BLOCK_ROWS,
        settings.min_gene_overlap, settings.progress, alternatives_of(adata, settings.layer),
    )  # fmt: skip
    columns = obs_columns(
        prediction.probabilities.argmax(axis=1), prediction.probabilities.max(axis=1),
        prediction.empty, prediction.classes, settings.key_added, threshold, prediction.novelty,
    )  # fmt: skip
    record = {
        **run_record(str(settings.model), model, prediction.coverage, prediction.input_kind,
                     settings.layer, threshold),
        "n_cells_without_counts": int(prediction.empty.sum()),
        "key_added": settings.key_added,
        "written": planned.as_record(earlier),
        "replaced": list(planned.replaced),
        "removed": list(planned.stale),
    }  # fmt: skip
    keys = ResultKeys(settings.key_added)
    arrays = {"embedding": prediction.embedding, "probabilities": prediction.probabilities}
    obsm = {getattr(keys, name): arrays[name] for name in wide}
    if output is None:
        for kind, name in (key.split("/", 1) for key in planned.stale):
            del getattr(adata, kind)[name]
        for name, values in columns.items():
            adata.obs[name] = values
        adata.obsm.update(obsm)
        adata.uns[ANNOTATE_RECORD_KEY] = {k: v for k, v in record.items() if v is not None}
    else:
        write_output(output, columns, adata.obs_names, record, obsm)
    return AnnotationResult(
        columns=columns, coverage=prediction.coverage, n_cells=adata.n_obs,
        seconds=time.perf_counter() - start, written_to=output or "the AnnData", record=record,
        key_added=settings.key_added, embedding=prediction.embedding,
        probabilities=prediction.probabilities, obs_names_source=lambda: adata.obs_names,
    )  # fmt: skip


def model_inputs(
    adata: anndata.AnnData,
    gene_names: Sequence[str],
    layer: str | None = None,
    min_gene_overlap: float = DEFAULT_MIN_GENE_OVERLAP,
) -> tuple[np.ndarray | sparse.csr_matrix, np.ndarray]:
    """The model's input: log1p(CPM) of the model's genes, in the model's order.

    Raw counts or log1p(CPM) are accepted (detected); each cell's library size is
    taken over all its genes, then the model's genes are selected and reordered,
    those missing from the data set to zero.

    Parameters
    ----------
    adata
        Cells x genes, gene identifiers in ``var_names``.
    gene_names
        The model's genes, in its input order.
    layer
        Read this layer instead of ``X`` (``'raw'``: ``adata.raw``).
    min_gene_overlap
        Least fraction of the model's genes the data must hold.

    Returns
    -------
    The float32 matrix ``[cells, model genes]`` (CSR when the data is sparse) and,
    for each model gene, whether the data holds it.

    Raises
    ------
    ValueError
        For an unknown layer, less than ``min_gene_overlap`` of the model's genes
        (or none) in the data, or data that is neither raw counts nor log1p(CPM).
    """
    matrix, var_names = matrix_of(adata, layer, None)
    found = gene_index_map(var_names, gene_names) >= 0
    if not found.any() or found.mean() < min_gene_overlap:
        raise ValueError(
            f"Only {int(found.sum())} of the model's {len(gene_names)} genes "
            f"({found.mean():.1%}) are in adata.var_names (minimum {min_gene_overlap:.0%}; "
            f"model genes start {list(gene_names[:3])}, data {list(var_names[:3])}): "
            "check the gene identifiers (symbols vs Ensembl IDs) and the species, or lower "
            "min_gene_overlap (--min-gene-overlap) to proceed anyway."
        )
    logger.info("Found %d of %d model genes in the data", int(found.sum()), len(found))
    X, _ = to_log1p_cpm(matrix)
    return align_genes(X, var_names, gene_names), found
