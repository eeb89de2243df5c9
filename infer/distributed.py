"""Run annotation blocks on a Dask cluster: each worker opens the store and the model itself."""

from __future__ import annotations

import logging

from .blocks import BlockEncoder, BlockPlan
from .compute import progress_bar
from .model import OnnxModel
from .partial import PartialResults
from .store import open_store

logger = logging.getLogger(__name__)

# Per worker process: opened stores, onnxruntime sessions and block encoders
# reused across blocks.
_OPENED: dict[tuple, list] = {}


def _classify(store, model_path, options: dict, threads, plan: BlockPlan, start: int, stop: int):
    """(start, results) of the block ``[start, stop)``; ``options`` open the store."""
    key = (store, model_path, tuple(sorted(options.items())), threads)
    if key not in _OPENED:
        reader = open_store(store, writable=False, **options)
        _OPENED[key] = [reader, OnnxModel(model_path, threads=threads), None]
    reader, model, encoder = _OPENED[key]
    if encoder is None or encoder.plan is not plan:
        encoder = _OPENED[key][2] = BlockEncoder(plan)
    return start, encoder.run(model, reader.read_rows(start, stop), start)


def compute_blocks_distributed(
    store: str,
    model_path: str,
    plan: BlockPlan,
    partial: PartialResults,
    layer: str | None = None,
    gene_key: str | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    threads: int | None = None,
    progress: bool = True,
    source: dict | None = None,
) -> None:
    """Map the unfinished blocks over Dask workers; results are saved here as they arrive.

    Parameters
    ----------
    workers
        Start a local cluster of this many single-threaded worker processes.
    scheduler
        Address of an existing cluster's scheduler (``tcp://host:8786``); its
        workers must reach ``store`` and ``model_path`` at the same paths/URLs.
    source
        What selects the cells of a TileDB-SOMA Experiment (``measurement``,
        ``obs_filter``; see :func:`scnym.infer.store.source_identity`).
    """
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError as err:
        raise ValueError(
            "--workers/--scheduler need dask.distributed: pip install 'scnym[distributed]'"
        ) from err
    todo = partial.missing(plan.bounds)
    options = {"layer": layer, "gene_key": gene_key}
    options.update({k: v for k, v in (source or {}).items() if k in ("measurement", "obs_filter")})
    if scheduler:
        client, cluster = Client(scheduler), None
    else:
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(cluster)
    try:
        plan_future = client.scatter(plan, broadcast=True)
        futures = [
            client.submit(
                _classify,
                store,
                model_path,
                options,
                threads or 1,
                plan_future,
                a,
                b,
                pure=False,
            )  # fmt: skip
            for a, b in todo
        ]
        sizes = dict(todo)
        bar = progress_bar(plan.bounds, todo, "Annotating (dask)", progress)
        for future in as_completed(futures):
            start, arrays = future.result()
            partial.save(start, arrays)
            bar.update(sizes[start] - start)
        bar.close()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
