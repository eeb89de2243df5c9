"""Annotate an AnnData store with an exported scNym model: the ``annotate`` verb.

One downward path: the store is opened (:mod:`.store`), checked against the
model and cut into blocks (:mod:`.blocks`), the blocks are classified here or on
a Dask cluster (:mod:`.compute`, :mod:`.distributed`) into the partial results
(:mod:`.partial`), and the results enter the store, or the output, once every
block is done (:mod:`.writer`). Peak memory depends on the block size, not on
the number of cells, and an interrupted run resumes without recomputing.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnxruntime as ort
from scnym import __version__

from .blocks import DEFAULT_MIN_GENE_OVERLAP, BlockPlan, GeneCoverage, plan_blocks
from .compute import compute_blocks
from .contract import DEFAULT_KEY_ADDED
from .distributed import compute_blocks_distributed
from .model import Device, OnnxModel, resolve_providers
from .partial import PartialResults, WideArrays, partial_folder
from .store import StoreReader, open_store
from .writer import (
    check_output,
    check_writable,
    destination_zarr_format,
    wide_keys,
    write_results,
)

logger = logging.getLogger(__name__)


@dataclass
class AnnotationResult:
    """What a run produced (the arrays are in row order of the store)."""

    labels: np.ndarray
    confidence: np.ndarray
    coverage: GeneCoverage
    n_cells: int
    seconds: float
    written_to: str
    record: dict = field(default_factory=dict)

    @property
    def cells_per_s(self) -> float:
        return self.n_cells / max(self.seconds, 1e-9)


def annotate(
    store: str | os.PathLike,
    model: str | os.PathLike,
    output: str | os.PathLike | None = None,
    layer: str | None = None,
    gene_key: str | None = None,
    key_added: str = DEFAULT_KEY_ADDED,
    batch_size: int | None = None,
    device: Device = "cpu",
    threads: int | None = None,
    resume: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    min_gene_overlap: float = DEFAULT_MIN_GENE_OVERLAP,
    unknown_threshold: float | None | Literal["auto"] = "auto",
    write_probabilities: bool = False,
    progress: bool = True,
) -> AnnotationResult:
    """Annotate the cells of an AnnData store with an exported scNym model.

    Parameters
    ----------
    store
        zarr store or h5ad file: a local path or an fsspec URL (``s3://``, ``https://``, ...).
    model
        The ``.onnx`` file written by ``scnym export``.
    output
        Where to write the results instead of the store: ``.zarr``/``.h5ad`` (an
        AnnData of the results), ``.parquet`` or ``.csv`` (the obs columns).
        Required when the store is remote or read-only.
    layer, gene_key
        Read ``layers[layer]`` instead of ``X``; take the gene identifiers from
        ``var[gene_key]`` instead of the ``var`` index.
    key_added
        Name of the label column (``obs[key_added]``, ``obs[key_added + '_confidence']``).
    batch_size
        Rows per block (rounded to whole chunks of the store).
    device
        ``'cpu'``, ``'cuda'`` (onnxruntime-gpu) or ``'auto'``.
    threads
        onnxruntime intra-op threads.
    resume
        Continue an interrupted run, reusing its finished blocks.
    workers, scheduler
        Run on a local Dask cluster of ``workers`` processes, or on the one at ``scheduler``.
    min_gene_overlap
        Least fraction of the model's genes the store must hold.
    unknown_threshold
        Cells whose confidence is below it are labeled ``'Unknown'`` in
        ``obs[key_added + '_unknown']``; ``'auto'`` takes the model's threshold
        (none: no such column).
    write_probabilities
        Also write the class probabilities (``obsm[key_added + '_probabilities']``).
    progress
        Show a progress bar.
    """
    start_time = time.perf_counter()
    output = None if output is None else str(output)
    check_output(output)
    onnx_model = OnnxModel(model, providers=resolve_providers(device), threads=threads)
    reader = open_store(store, layer=layer, gene_key=gene_key, writable=output is None)
    try:
        check_writable(reader, output)
        plan = plan_blocks(reader, onnx_model, batch_size, min_gene_overlap)
        _log_coverage(plan.coverage)
        partial = _open_partial(reader, onnx_model, plan, output, write_probabilities, resume)
        try:
            _compute(reader, onnx_model, str(model), plan, partial, workers, scheduler, progress)
            labels, confidence, written_to, record = _write(
                reader, partial, plan, onnx_model, str(model), key_added, output, unknown_threshold
            )
        finally:
            partial.release()
        partial.remove()
    finally:
        reader.close()
    seconds = time.perf_counter() - start_time
    return AnnotationResult(
        labels, confidence, plan.coverage, reader.n_obs, seconds, written_to, record
    )


def _compute(
    reader: StoreReader,
    model: OnnxModel,
    model_path: str,
    plan: BlockPlan,
    partial: PartialResults,
    workers: int | None,
    scheduler: str | None,
    progress: bool,
) -> None:
    """Classify the unfinished blocks here, or on a Dask cluster when one is asked for."""
    if workers or scheduler:
        compute_blocks_distributed(
            reader.location, model_path, plan, partial, layer=reader.layer,
            gene_key=reader.gene_key, workers=workers, scheduler=scheduler,
            threads=model.threads, progress=progress,
        )  # fmt: skip
    else:
        compute_blocks(reader, model, plan, partial, progress=progress)


def _log_coverage(cov: GeneCoverage) -> None:
    logger.info(
        "gene coverage: %d/%d model genes (%.1f%%), %.1f%% of counts captured",
        cov.n_found, cov.n_model_genes, 100 * cov.gene_fraction, 100 * cov.counts_fraction,
    )  # fmt: skip


def _open_partial(
    reader: StoreReader,
    model: OnnxModel,
    plan: BlockPlan,
    output: str | None,
    write_probabilities: bool,
    resume: bool,
) -> PartialResults:
    """Open (or, with ``resume``, reopen) the folder of finished blocks and take its lock."""
    identity = {
        "weights_sha256": model.metadata.get("weights_sha256"),
        "bounds": [list(b) for b in plan.bounds],
        "layer": reader.layer,
        "gene_key": reader.gene_key,
        "n_obs": reader.n_obs,
    }
    wide = WideArrays(
        keys=wide_keys(output, write_probabilities),
        n_obs=reader.n_obs,
        chunk_rows=plan.bounds[0][1] - plan.bounds[0][0],
        zarr_format=destination_zarr_format(reader, output),
    )
    partial = PartialResults(partial_folder(reader.location, output), identity, wide)
    partial.open(resume=resume)
    return partial


def _write(
    reader: StoreReader,
    partial: PartialResults,
    plan: BlockPlan,
    model: OnnxModel,
    model_path: str,
    key_added: str,
    output: str | None,
    unknown_threshold: float | None | Literal["auto"],
) -> tuple[np.ndarray, np.ndarray, str, dict]:
    """Write every block's results; returns (labels, confidences, where, record)."""
    threshold = model.metadata.get("confidence_threshold")
    if unknown_threshold != "auto":
        threshold = unknown_threshold
    record = _record(model_path, model, plan, reader.layer, threshold)
    written_to, labels, confidence = write_results(
        reader, partial, plan, model.classes, key_added=key_added, output=output,
        record=record, unknown_threshold=threshold,
    )  # fmt: skip
    return labels, confidence, written_to, record


def _record(
    model_path: str, model: OnnxModel, plan: BlockPlan, layer: str | None, threshold
) -> dict:
    """What the run did, kept in ``uns['scNym_annotate']`` (or beside a table output)."""
    cov = plan.coverage
    return {
        "model": model_path,
        "weights_sha256": model.metadata.get("weights_sha256"),
        "classes": model.classes,
        "gene_coverage": cov.gene_fraction,
        "n_model_genes_found": cov.n_found,
        "counts_fraction": cov.counts_fraction,
        "input_kind": plan.input_kind,
        "layer": layer,
        "unknown_threshold": threshold,
        "scnym": __version__,
        "onnxruntime": ort.__version__,
        "providers": model.session.get_providers(),
    }
