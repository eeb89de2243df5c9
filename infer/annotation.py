"""Annotate an AnnData store with an exported scNym model: the ``annotate`` verb.

One downward path: the store is opened (:mod:`.store`), checked against the
model and cut into blocks (:mod:`.blocks`), the blocks are classified here or on
a Dask cluster (:mod:`.compute`, :mod:`.distributed`) into the partial results
(:mod:`.partial`), and the results enter the store, or the output, once every
block is done (:mod:`.writer`). Peak memory depends on the block size, not on
the number of cells, and an interrupted run resumes without recomputing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from typing import Literal

import anndata

from .blocks import GeneCoverage, InvalidCells, plan_blocks
from .compute import compute_blocks
from .contract import DEFAULT_KEY_ADDED, DEFAULT_MIN_GENE_OVERLAP, metadata_digest
from .distributed import compute_blocks_distributed
from .guards import (
    check_key_added,
    check_output,
    check_own_keys,
    check_writable,
    earlier_keys,
    keys_to_write,
)
from .memory import annotate_adata
from .model import Device, OnnxModel, resolve_model, resolve_providers, warn_without_novelty
from .partial import PartialResults, WideArrays, partial_folder
from .result import AnnotationResult, run_record
from .settings import AnnotateSettings
from .store import obs_names_source, open_store, source_identity
from .writer import destination_zarr_format, wide_keys, write_results

logger = logging.getLogger(__name__)


def annotate(
    store: str | os.PathLike | anndata.AnnData,
    model: str | os.PathLike,
    output: str | os.PathLike | None = None,
    layer: str | None = None,
    gene_key: str | None = None,
    key_added: str = DEFAULT_KEY_ADDED,
    batch_size: int | None = None,
    device: Device = "auto",
    threads: int | None = None,
    resume: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    min_gene_overlap: float = DEFAULT_MIN_GENE_OVERLAP,
    unknown_threshold: float | None | Literal["auto"] = "auto",
    write_probabilities: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    measurement: str | None = None,
    obs_filter: str | None = None,
) -> AnnotationResult:
    """Annotate the cells of an AnnData store with an exported scNym model.

    Parameters
    ----------
    store
        zarr store or h5ad file (a local path or an fsspec URL: ``s3://``, ``https://``,
        ...), a TileDB-SOMA Experiment (path or URI; read-only, so ``output`` is
        required), or an AnnData in memory (results added to it; ``resume`` and Dask
        unused).
    model
        The ``.onnx`` file written by ``scnym export``, or a registry model name.
    output
        Where to write the results instead of the store: ``.zarr``/``.h5ad`` (an
        AnnData of the results), ``.parquet`` or ``.csv`` (the obs columns).
        Required when the store is remote or read-only; never the store itself.
    layer, gene_key
        Read ``layers[layer]`` (``'raw'``: ``adata.raw``, unless such a layer exists)
        instead of ``X``; take the genes from ``var[gene_key]``, not the ``var`` index.
    key_added
        Name of the label column (``obs[key_added]``; also ``_confidence``, ``_novelty``
        and ``_unknown`` after it); a store's existing keys are replaced only where an
        earlier scNym run wrote them.
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
        Flag (bool ``obs[key_added + '_unknown']``) cells whose novelty score is above
        it, and cells without counts; ``'auto'``: the model's (None: no flag). Models
        exported without the score flag cells whose confidence is below it.
    write_probabilities
        Also write the class probabilities (``obsm[key_added + '_probabilities']``).
    overwrite
        Replace an existing ``output`` (once the new results are complete).
    progress
        Show a progress bar.
    measurement, obs_filter
        Of a TileDB-SOMA Experiment: the measurement to read (default ``'RNA'``) and
        a value filter on its obs (``"tissue_general == 'blood'"``); ``layer`` names
        its X layer (default ``'raw'``), ``gene_key`` a var column (``'feature_name'``:
        the Census' gene symbols).
    """
    settings = AnnotateSettings(**locals())  # the arguments, as one value passed down
    if isinstance(store, anndata.AnnData) and store.isbacked:  # its file is a store
        settings = dataclasses.replace(settings, store=str(store.filename))
    elif isinstance(store, anndata.AnnData):
        if measurement is not None or obs_filter is not None:
            raise ValueError("measurement and obs_filter apply to TileDB-SOMA Experiments only")
        return annotate_adata(store, settings)
    return _annotate_store(settings)


def _annotate_store(settings: AnnotateSettings) -> AnnotationResult:
    """Stream a store's blocks into partial results, then write them."""
    start_time = time.perf_counter()
    run = _Run(settings)
    try:
        run.prepare()
        try:
            run.compute()
            columns, written_to, record = run.write()
        except InvalidCells:
            run.partial.remove()  # blocks of refused data are of no use to a resume
            raise
        finally:
            run.partial.release()
        run.partial.remove()
    finally:
        run.reader.close()
    return AnnotationResult(
        columns=columns,
        coverage=run.plan.coverage,
        n_cells=run.reader.n_obs,
        seconds=time.perf_counter() - start_time,
        written_to=written_to,
        record=record,
        key_added=settings.key_added,
        obs_names_source=obs_names_source(run.reader),
    )


class _Run:
    """One annotation run: checks, then blocks into partial results, then the writer."""

    def __init__(self, settings: AnnotateSettings) -> None:
        self.settings = s = settings
        self.output = None if s.output is None else str(s.output)
        check_output(self.output, str(s.store), s.overwrite)
        check_key_added(s.key_added)
        self.model_path = resolve_model(s.model)
        self.model = OnnxModel(
            self.model_path, providers=resolve_providers(s.device), threads=s.threads
        )
        warn_without_novelty(self.model)
        self.threshold = s.threshold(self.model)
        self.wide = wide_keys(self.output, s.write_probabilities)
        self.reader = open_store(
            s.store, layer=s.layer, gene_key=s.gene_key, writable=self.output is None,
            measurement=s.measurement, obs_filter=s.obs_filter,
        )  # fmt: skip

    def prepare(self) -> None:
        """Refuse what would destroy data, plan the blocks and open the partial results."""
        s = self.settings
        check_writable(self.reader, self.output)
        self.keys = keys_to_write(
            s.key_added, self.wide, self.threshold is not None, self.model.has_novelty
        )
        self.earlier: dict[str, list[str]] = {}
        if self.output is None:
            self.keys = check_own_keys(self.reader, self.keys)
            self.earlier = earlier_keys(self.reader.root)
        self.plan = plan_blocks(self.reader, self.model, s.batch_size, s.min_gene_overlap)
        _log_coverage(self.plan.coverage)
        self.partial = self._open_partial()

    def _open_partial(self) -> PartialResults:
        """Open (or, with ``resume``, reopen) the folder of finished blocks and take its lock."""
        reader, plan = self.reader, self.plan
        identity = {
            "weights_sha256": self.model.metadata.get("weights_sha256"),
            "metadata_sha256": metadata_digest(self.model.metadata),
            "var_names_sha256": hashlib.sha256("\n".join(reader.var_names).encode()).hexdigest(),
            "bounds": [list(b) for b in plan.bounds],
            "layer": reader.layer,
            "gene_key": reader.gene_key,
            "n_obs": reader.n_obs,
            **source_identity(reader),
        }
        wide = WideArrays(
            keys=self.wide,
            n_obs=reader.n_obs,
            chunk_rows=plan.bounds[0][1] - plan.bounds[0][0],
            zarr_format=destination_zarr_format(reader, self.output),
        )
        partial = PartialResults(partial_folder(reader.location, self.output), identity, wide)
        partial.open(resume=self.settings.resume)
        return partial

    def compute(self) -> None:
        """Classify the unfinished blocks here, or on a Dask cluster when one is asked for."""
        s = self.settings
        if s.workers or s.scheduler:
            compute_blocks_distributed(
                self.reader.location, str(self.model_path), self.plan, self.partial,
                layer=self.reader.layer, gene_key=self.reader.gene_key, workers=s.workers,
                scheduler=s.scheduler, threads=s.threads, progress=s.progress,
                source=source_identity(self.reader),
            )  # fmt: skip
        else:
            compute_blocks(self.reader, self.model, self.plan, self.partial, progress=s.progress)

    def write(self) -> tuple[dict[str, object], str, dict]:
        """Write every block's results; returns (obs columns, where, record)."""
        record = {
            **self._record(),
            "written": self.keys.as_record(self.earlier),
            "replaced": list(self.keys.replaced),
            "removed": list(self.keys.stale),
        }
        written_to, columns, record = write_results(
            self.reader, self.partial, self.plan, self.model.classes,
            key_added=self.settings.key_added, output=self.output, record=record,
            unknown_threshold=self.threshold, novelty=self.model.has_novelty,
        )  # fmt: skip
        return columns, written_to, record

    def _record(self) -> dict:
        """What the run did, kept in ``uns['scNym_annotate']`` (or beside a table output)."""
        return run_record(
            str(self.settings.model), self.model, self.plan.coverage, self.plan.input_kind,
            self.reader.layer, self.threshold,
        )  # fmt: skip


def _log_coverage(cov: GeneCoverage) -> None:
    logger.info(
        "gene coverage: %d/%d model genes (%.1f%%), %.1f%% of counts captured",
        cov.n_found, cov.n_model_genes, 100 * cov.gene_fraction, 100 * cov.counts_fraction,
    )  # fmt: skip
