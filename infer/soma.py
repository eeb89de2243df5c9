"""Read a TileDB-SOMA Experiment (the CZ CELLxGENE Census layout) by row blocks of ``soma_joinid``.

A SOMA source is read, never written: one measurement (default ``RNA``), one X
layer (default ``raw``, as the Census names it), the cells an optional obs
value filter selects (the Census' filter syntax), in ``soma_joinid`` order.
``tiledbsoma`` is an extra (``pip install 'scnym[soma]'``), imported on first use.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd
from scipy import sparse

from .fileio import is_url

INSTALL = "pip install 'scnym[soma]'"
DEFAULT_MEASUREMENT = "RNA"
#: X layer read when none is given (the Census' raw counts); else the only one there.
DEFAULT_SOMA_LAYER = "raw"
#: obs columns that name the cells (``tiledbsoma.io.from_anndata`` writes the obs
#: index as ``obs_id``); without one, the cells are named by their ``soma_joinid``.
OBS_ID_COLUMNS = ("obs_id",)
#: var columns of the gene identifiers when no ``gene_key`` is given: the var index
#: written by ``from_anndata``, the Census' Ensembl IDs.
VAR_ID_COLUMNS = ("var_id", "feature_id")
#: Files that mark a TileDB group (a SOMA Experiment is one).
_GROUP_MARKERS = ("__tiledb_group.tdb", "__group")


def is_soma(location: str) -> bool:
    """Whether ``location`` (a path or URL) is a TileDB group such as a SOMA Experiment."""
    location = str(location).rstrip("/")
    if location.startswith("tiledb://"):
        return True
    if location.endswith((".h5ad", ".h5", ".zarr")):
        return False
    if not is_url(location):
        return any((Path(location) / marker).exists() for marker in _GROUP_MARKERS)
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(location)
        return any(fs.exists(f"{path}/{marker}") for marker in _GROUP_MARKERS)
    except Exception:  # no filesystem for the protocol, no access: not ours to say
        return False


def _tiledbsoma():
    try:
        import tiledbsoma
    except ImportError as err:
        raise ValueError(f"Reading TileDB-SOMA experiments needs tiledbsoma: {INSTALL}") from err
    return tiledbsoma


def soma_context(location: str):
    """A SOMA context whose S3 settings follow the AWS environment (None: TileDB's defaults).

    TileDB reads ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` itself; the
    endpoint of a local or non-AWS S3 service (MinIO, moto) is set here from
    ``AWS_ENDPOINT_URL`` (path-style addressing), the region from ``AWS_REGION``
    or ``AWS_DEFAULT_REGION``.
    """
    tiledbsoma = _tiledbsoma()
    if not location.startswith("s3://"):
        return None
    config = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        url = urlparse(endpoint)
        config["vfs.s3.endpoint_override"] = url.netloc
        config["vfs.s3.scheme"] = url.scheme or "https"
        config["vfs.s3.use_virtual_addressing"] = "false"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        config["vfs.s3.region"] = region
    return tiledbsoma.SOMATileDBContext(tiledb_config=config) if config else None


@dataclass
class SomaReader:
    """Row blocks of one X layer of a SOMA Experiment's measurement (read-only).

    Offers what annotation uses of :class:`scnym.infer.store.StoreReader`
    (``read_rows``, ``var_names``, ``n_obs``, ...). Row ``i`` is the cell
    ``joinids[i]``: the selected cells in ``soma_joinid`` order.
    """

    location: str
    experiment: Any
    matrix: Any
    var_names: pd.Index
    n_obs: int
    measurement: str
    layer: str
    gene_key: str
    obs_filter: str | None
    #: soma_joinid of each row; None when they are 0..n_obs-1 (no filter, no gaps).
    joinids: np.ndarray | None
    #: Column of each X column (soma_dim_1) in ``var_names``; None when they are equal.
    var_order: np.ndarray | None
    alternatives: tuple[str, ...] = ()
    chunk_rows: int = 1  # TileDB tiles need no alignment: blocks are the requested size
    is_sparse: bool = True
    writable: bool = False
    root: Any = None
    _obs_names: pd.Index | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def selection(self) -> dict[str, str | None]:
        """What selects the cells and matrix, beyond layer and genes (a resume must match it)."""
        return {"source": "tiledbsoma", "measurement": self.measurement,
                "obs_filter": self.obs_filter}  # fmt: skip

    def row_joinids(self, start: int, stop: int) -> np.ndarray:
        """The ``soma_joinid`` of rows ``[start, stop)``."""
        if self.joinids is None:
            return np.arange(start, stop, dtype=np.int64)
        return self.joinids[start:stop]

    def read_rows(self, start: int, stop: int) -> sparse.csr_matrix:
        """Rows ``[start, stop)`` as a float32 CSR matrix (genes in ``var_names`` order)."""
        ids = self.row_joinids(start, stop)
        contiguous = len(ids) and int(ids[-1]) - int(ids[0]) == len(ids) - 1
        coords = slice(int(ids[0]), int(ids[-1])) if contiguous else ids  # SOMA slices: inclusive
        with self._lock:  # one read at a time on the shared handle
            table = self.matrix.read((coords,)).tables().concat()
        rows = np.searchsorted(ids, table.column("soma_dim_0").to_numpy())
        cols = table.column("soma_dim_1").to_numpy()
        if self.var_order is not None:
            cols = self.var_order[cols]
        data = table.column("soma_data").to_numpy().astype(np.float32, copy=False)
        shape = (len(ids), len(self.var_names))
        return sparse.csr_matrix((data, (rows, cols)), shape=shape)

    def obs_names(self) -> pd.Index:
        """The cells' names (the obs id column, else their ``soma_joinid``), in row order."""
        if self._obs_names is None:
            if self.experiment.closed:  # asked for after the run: reopened for this read
                self.experiment = _tiledbsoma().Experiment.open(
                    self.location, context=soma_context(self.location)
                )
            obs = self.experiment.obs
            column = next((c for c in OBS_ID_COLUMNS if c in obs.schema.names), None)
            if column is None:
                self._obs_names = pd.Index(self.row_joinids(0, self.n_obs).astype(str))
            else:
                frame = _read_obs(obs, self.obs_filter, ["soma_joinid", column], self.location)
                self._obs_names = pd.Index(frame[column].astype(str), name=column)
        return self._obs_names

    def reconsolidate(self) -> None:
        """Nothing to do: a SOMA source is never written."""

    def close(self) -> None:
        if not self.experiment.closed:
            self.experiment.close()


def _read_obs(obs, obs_filter: str | None, columns: list[str], location: str) -> pd.DataFrame:
    """The obs ``columns`` of the cells ``obs_filter`` selects, in ``soma_joinid`` order."""
    try:
        table = obs.read(column_names=columns, value_filter=obs_filter).concat()
    except Exception as err:  # tiledbsoma raises several types for a bad filter
        raise ValueError(
            f"--obs-filter {obs_filter!r} cannot be applied to {location}: {err}. obs columns: "
            f"{list(obs.schema.names)}"
        ) from err
    return table.to_pandas().sort_values("soma_joinid", kind="stable").reset_index(drop=True)


def _pick(what: str, name: str | None, present: list[str], location: str, default=None) -> str:
    """``name`` if ``present`` holds it; with no name, ``default`` or the only one there."""
    if name is None:
        if default in present:
            return default
        if len(present) == 1:
            return present[0]
    elif name in present:
        return name
    asked = f"no {what} {name!r}" if name else f"no default {what} ({default!r})"
    raise ValueError(f"{location} has {asked}: pass one of {present}")


def _genes(var, gene_key: str | None, location: str) -> tuple[pd.Index, np.ndarray | None, str]:
    """(gene identifiers by column, the column of each soma_dim_1 or None, the var column)."""
    columns = [c for c in var.schema.names if c != "soma_joinid"]
    if gene_key is None:
        gene_key = next((c for c in VAR_ID_COLUMNS if c in columns), None)
        if gene_key is None:
            raise ValueError(f"{location} var has none of {VAR_ID_COLUMNS}: pass --gene-key, one of {columns}")  # fmt: skip
    elif gene_key not in columns:
        raise ValueError(f"--gene-key {gene_key!r} is not a var column of {location}; columns: {columns}")  # fmt: skip
    frame = var.read(column_names=["soma_joinid", gene_key]).concat().to_pandas()
    frame = frame.sort_values("soma_joinid", kind="stable")
    joinids = frame["soma_joinid"].to_numpy()
    order = None
    if not np.array_equal(joinids, np.arange(len(joinids))):
        order = np.full(int(joinids.max()) + 1, -1, dtype=np.int64)
        order[joinids] = np.arange(len(joinids))
    return pd.Index(frame[gene_key].astype(str)), order, gene_key


def open_soma(
    location: str,
    layer: str | None = None,
    gene_key: str | None = None,
    measurement: str | None = None,
    obs_filter: str | None = None,
) -> SomaReader:
    """Open a SOMA Experiment for row-block reads of one measurement's X layer.

    Parameters
    ----------
    location
        Path or URI (``s3://``, ``tiledb://``) of the Experiment.
    layer
        X layer (default ``raw``, or the only layer).
    gene_key
        var column of the gene identifiers (default ``var_id``, else ``feature_id``;
        ``feature_name`` holds the Census' gene symbols).
    measurement
        Measurement (default ``RNA``, or the only one).
    obs_filter
        SOMA value filter on obs, e.g. ``"tissue_general == 'blood'"``.

    Raises
    ------
    ValueError
        If tiledbsoma is missing, the measurement, layer or gene key is unknown,
        the filter is invalid or selects no cells.
    """
    tiledbsoma = _tiledbsoma()
    try:
        experiment = tiledbsoma.Experiment.open(location, context=soma_context(location))
    except Exception as err:  # tiledbsoma raises several types for unreadable groups
        raise ValueError(f"Cannot open {location} as a TileDB-SOMA Experiment: {err}") from err
    try:
        return _reader(experiment, location, layer, gene_key, measurement, obs_filter)
    except BaseException:
        experiment.close()
        raise


def _reader(experiment, location, layer, gene_key, measurement, obs_filter) -> SomaReader:
    """The reader of an open Experiment (see :func:`open_soma`)."""
    ms_name = _pick("measurement", measurement, list(experiment.ms.keys()), location,
                    DEFAULT_MEASUREMENT)  # fmt: skip
    ms = experiment.ms[ms_name]
    layers = list(ms.X.keys()) if "X" in ms else []
    layer = _pick(f"X layer in measurement {ms_name!r}", layer, layers, location,
                  DEFAULT_SOMA_LAYER)  # fmt: skip
    matrix = ms.X[layer]
    if not isinstance(matrix, _tiledbsoma().SparseNDArray):
        raise ValueError(f"{location}: X layer {layer!r} is dense; scNym reads sparse layers")
    var_names, var_order, gene_key = _genes(ms.var, gene_key, location)
    joinids = _read_obs(experiment.obs, obs_filter, ["soma_joinid"], location)["soma_joinid"]
    joinids = joinids.to_numpy(dtype=np.int64)
    if len(joinids) == 0 and obs_filter:
        raise ValueError(f"--obs-filter {obs_filter!r} selects no cells of {location}")
    return SomaReader(
        location=location, experiment=experiment, matrix=matrix, var_names=var_names,
        n_obs=len(joinids), measurement=ms_name, layer=layer, gene_key=gene_key,
        obs_filter=obs_filter,
        joinids=None if np.array_equal(joinids, np.arange(len(joinids))) else joinids,
        var_order=var_order, alternatives=tuple(name for name in layers if name != layer),
    )  # fmt: skip


__all__ = ["SomaReader", "is_soma", "open_soma"]
