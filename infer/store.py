"""Open AnnData stores (zarr v2/v3, h5ad; local or fsspec URLs) for row-block reads.

A TileDB-SOMA Experiment is opened by :mod:`.soma` behind the same interface.

Everything on disk is read through anndata's element readers (``read_elem``,
``sparse_dataset``) and zarr/h5py arrays: no format parsing of our own.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata
import h5py
import numpy as np
import pandas as pd
import zarr
from anndata.io import read_elem, sparse_dataset
from scipy import sparse

from .contract import RAW_LAYER
from .fileio import is_url
from .soma import SomaReader, is_soma, open_soma

logger = logging.getLogger(__name__)

#: Rows per block when the store's chunking gives no better hint. The dense input
#: block dominates peak memory (rows x model genes x 4 bytes: 58 MB at 14k genes):
#: annotating 100k Kang cells took 435 MB at 1,024 rows vs 1,097 MB at 4,096, for
#: about 10-15 % fewer cells/s (raise it with ``batch_size``).
DEFAULT_BLOCK_ROWS = 1024


def is_h5ad(store: str | os.PathLike) -> bool:
    return str(store).rstrip("/").endswith((".h5ad", ".h5"))


@dataclass
class StoreReader:
    """A store opened for reading row blocks of one matrix (``X`` or a layer).

    Attributes
    ----------
    location
        The path or URL it was opened from.
    root
        The zarr group or h5py file.
    matrix
        The backed matrix: an anndata ``CSRDataset`` or a zarr/h5py array.
    var_names
        Gene identifiers (``var`` index, or ``var[gene_key]``).
    layer, gene_key
        What it was opened with (None: ``X``, the ``var`` index).
    """

    location: str
    root: Any
    matrix: Any
    var_names: pd.Index
    n_obs: int
    chunk_rows: int
    is_sparse: bool
    writable: bool
    layer: str | None = None
    gene_key: str | None = None
    #: The store's other matrices, for ``--layer`` (layers, and 'raw' for raw/X).
    alternatives: tuple[str, ...] = ()
    _h5: h5py.File | None = field(default=None, repr=False)
    #: The fsspec file a remote h5ad is read through.
    _handle: Any = field(default=None, repr=False)
    #: A CSR element's (indptr, indices, data) arrays, read directly (see ``read_rows``).
    _csr: tuple[Any, Any, Any] | None = field(default=None, repr=False)

    def read_rows(self, start: int, stop: int) -> sparse.csr_matrix:
        """Rows ``[start, stop)`` as a float32 CSR matrix."""
        if self._csr is not None:
            # A row range of CSR is three slices. Taken from the zarr/h5py arrays
            # directly because anndata 0.12's backed-sparse slicing looks up scipy's
            # version in the package metadata on every call: 10 ms per block here,
            # about a third of the reading time of 100k Kang cells.
            indptr, indices, data = self._csr
            ptr = np.asarray(indptr[start : stop + 1], dtype=np.int64)
            lo, hi = int(ptr[0]), int(ptr[-1])
            if np.any(np.diff(ptr) < 0) or hi > self._csr[2].shape[0]:
                raise ValueError(
                    f"{self.location} is damaged: its indptr is not increasing over rows "
                    f"{start}-{stop}. Re-create or restore the store."
                )
            return sparse.csr_matrix(
                (np.asarray(data[lo:hi], dtype=np.float32), np.asarray(indices[lo:hi]), ptr - lo),
                shape=(stop - start, int(self.matrix.shape[1])),
            )
        block = self.matrix[start:stop]
        if sparse.issparse(block):
            return sparse.csr_matrix(block, dtype=np.float32)
        return sparse.csr_matrix(np.asarray(block, dtype=np.float32))

    def reconsolidate(self) -> None:
        """Refresh a local zarr store's consolidated metadata after new elements were written."""
        if self._h5 is None and not is_url(self.location):
            consolidated = Path(self.location) / ".zmetadata"
            v3_root = Path(self.location) / "zarr.json"
            if consolidated.exists() or (
                v3_root.exists() and "consolidated_metadata" in v3_root.read_text()
            ):
                zarr.consolidate_metadata(self.location)

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
        if self._handle is not None:
            self._handle.close()


def _open_root(location: str, mode: str):
    """(zarr group or h5py file, whether it was opened for writing, file handle to close)."""
    if is_h5ad(location):
        if is_url(location):
            import fsspec

            handle = fsspec.open(location, "rb").open()
            return h5py.File(handle, "r"), False, handle
        return h5py.File(location, mode), mode != "r", None
    if is_url(location):
        store = zarr.storage.FsspecStore.from_url(location, read_only=mode == "r")
        return zarr.open_group(store, mode=mode), False, None
    # Consolidated metadata would hide elements added by this run; it is
    # rewritten after the results are in (see ``StoreReader.reconsolidate``).
    return zarr.open_group(location, mode=mode, use_consolidated=False), mode != "r", None


def _encoding(element) -> str:
    return str(element.attrs.get("encoding-type", "array"))


def open_store(
    store: str | os.PathLike,
    layer: str | None = None,
    gene_key: str | None = None,
    writable: bool = True,
    measurement: str | None = None,
    obs_filter: str | None = None,
) -> StoreReader | SomaReader:
    """Open an AnnData store (or a TileDB-SOMA Experiment) for streaming reads of one matrix.

    Parameters
    ----------
    store
        Local path or fsspec URL of a zarr store or an h5ad file.
    layer
        Read this layer instead of ``X``.
    gene_key
        ``var`` column holding the gene identifiers (default: the ``var`` index).
    writable
        Open a local store for writing (results are added in place).
    measurement, obs_filter
        Of a TileDB-SOMA Experiment (see :func:`scnym.infer.soma.open_soma`),
        which is always opened read-only.

    Raises
    ------
    FileNotFoundError
        If a local store does not exist.
    ValueError
        If the matrix is missing, CSC, or the gene key is unknown.
    """
    location = str(store)
    if is_soma(location):
        return open_soma(location, layer, gene_key, measurement=measurement, obs_filter=obs_filter)
    if measurement is not None or obs_filter is not None:
        raise ValueError(
            f"--measurement and --obs-filter select within a TileDB-SOMA Experiment; {location} "
            "is not one"
        )
    if not is_url(location) and not Path(location).exists():
        raise FileNotFoundError(f"Store {location} does not exist")
    # zarr opens a folder "r+" without checking that it can write there
    can_write = writable and not is_url(location) and os.access(location, os.W_OK)
    mode = "r+" if can_write else "r"
    try:
        root, can_write, handle = _open_root(location, mode)
    except PermissionError:
        root, can_write, handle = _open_root(location, "r")  # read-only: results need --output
    except Exception as err:  # zarr/h5py raise several types for unreadable stores
        raise ValueError(f"Cannot open {location} as an AnnData store: {err}") from err
    element, name = _matrix_element(root, location, layer)
    matrix, csr, chunk_rows = _backed_matrix(element, location, name)
    return StoreReader(
        location=location,
        root=root,
        matrix=matrix,
        var_names=_var_names(root, gene_key, name),
        n_obs=int(matrix.shape[0]),
        chunk_rows=chunk_rows,
        is_sparse=csr is not None,
        writable=can_write,
        layer=layer,
        gene_key=gene_key,
        alternatives=_alternatives(root, name),
        _h5=root if isinstance(root, h5py.File) else None,
        _handle=handle,
        _csr=csr,
    )


def _matrix_element(root, location: str, layer: str | None):
    """The element of ``X``, ``layers[layer]`` or (``'raw'``) ``raw/X``, and its name."""
    if layer is None:
        if "X" not in root:
            raise ValueError(f"{location} has no X matrix; pass --layer to read a layer")
        return root["X"], "X"
    layers = root["layers"] if "layers" in root else {}
    if layer in layers:
        return layers[layer], f"layers/{layer}"
    if layer == RAW_LAYER and "raw" in root and "X" in root["raw"]:
        return root["raw"]["X"], "raw/X"
    available = list(layers.keys()) if hasattr(layers, "keys") else []
    raw = " (and no raw/X)" if layer == RAW_LAYER else ""
    raise ValueError(f"{location} has no layer {layer!r}{raw}; layers: {available}")


def _backed_matrix(element, location: str, name: str):
    """(backed matrix, CSR arrays or None, rows per chunk) of a CSR or dense element.

    Raises
    ------
    ValueError
        If the element is CSC.
    """
    encoding = _encoding(element)
    if encoding == "csc_matrix":
        raise ValueError(
            f"{location} stores {name} as CSC: reading cells row by row from CSC is "
            "pathologically slow. Convert it once to CSR, e.g. "
            "`adata = anndata.read_zarr(path); adata.X = adata.X.tocsr(); adata.write_zarr(new_path)`"
        )
    if encoding != "csr_matrix":
        return element, None, _chunk_length(element)
    _check_chunks(element, location, name)
    matrix = sparse_dataset(element)
    data = element["data"]
    per_row = max(int(data.shape[0]) // max(int(matrix.shape[0]), 1), 1)
    chunk_rows = max(_chunk_length(data) // per_row, 1)
    return matrix, (element["indptr"], element["indices"], data), chunk_rows


def _alternatives(root, name: str) -> tuple[str, ...]:
    """The matrices other than ``name`` that ``--layer`` could read."""
    layers = [f"{key}" for key in (root["layers"].keys() if "layers" in root else [])]
    raw = [RAW_LAYER] if "raw" in root and "X" in root["raw"] and name != "raw/X" else []
    return tuple(key for key in [*layers, *raw] if f"layers/{key}" != name)


def _check_chunks(element, location: str, name: str) -> None:
    """Refuse a CSR element whose ``indices`` lack chunks; warn when ``data`` does.

    zarr fills a missing chunk with the fill value (zero) and may leave a chunk of
    only zeros unwritten. No valid ``indices`` chunk is all zeros (a row holds
    column 0 at most once, so that would take a chunk's length of consecutive
    one-value rows), so a missing one is damage. A ``data`` chunk of stored zeros
    is valid (values zeroed without ``eliminate_zeros``) and cannot be told from a
    deleted one: it is reported, not refused. (h5py datasets have no chunk files.)
    """
    for key in ("indices", "data"):
        array = element[key]
        if not isinstance(array, zarr.Array):
            continue
        missing = array.nchunks - array.nchunks_initialized
        if not missing:
            continue
        message = (
            f"{location}: {name}/{key} lacks {missing} of its {array.nchunks} chunks, which "
            "read as zeros"
        )
        if key == "indices":
            raise ValueError(f"{message}: the store is damaged. Re-create or restore it.")
        logger.warning(
            "%s: stored zeros, or deleted chunks (then cells lose counts: restore the store)",
            message,
        )


def _var_names(root, gene_key: str | None, name: str = "X") -> pd.Index:
    """Gene identifiers of the matrix ``name``: the ``var`` index, or ``var[gene_key]``."""
    group = root["raw"] if name == "raw/X" else root
    if "var" not in group:
        raise ValueError(f"{name} has no var (gene table) beside it: this is not an AnnData store")
    var = read_elem(group["var"])
    if gene_key is None:
        return pd.Index(var.index.astype(str))
    if gene_key in var.columns:
        return pd.Index(var[gene_key].astype(str))
    raise ValueError(f"--gene-key {gene_key!r} is not a var column; columns: {list(var.columns)}")


def _chunk_length(array) -> int:
    chunks = getattr(array, "chunks", None)
    if not chunks:
        return DEFAULT_BLOCK_ROWS
    return int(chunks[0])


def block_bounds(n_obs: int, block_rows: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of consecutive row blocks covering ``n_obs`` rows."""
    return [(start, min(start + block_rows, n_obs)) for start in range(0, n_obs, block_rows)]


def aligned_block_rows(chunk_rows: int, requested: int | None) -> int:
    """A block size that is a whole number of the store's row chunks (when they are smaller)."""
    target = requested or DEFAULT_BLOCK_ROWS
    if chunk_rows >= target:
        return target
    return max(target // chunk_rows, 1) * chunk_rows


def read_obs_names(reader: StoreReader | SomaReader) -> pd.Index:
    """The ``obs`` index of the store (a SOMA Experiment's obs id column)."""
    if isinstance(reader, SomaReader):
        return reader.obs_names()
    return _obs_names(reader.root)


def obs_names_source(reader: StoreReader | SomaReader) -> Callable[[], pd.Index]:
    """What reads the store's obs names later, once ``reader`` is closed."""
    if isinstance(reader, SomaReader):
        return reader.obs_names  # read (and kept) by the writer of the output
    return functools.partial(read_obs_names_at, reader.location)


def source_columns(reader: StoreReader | SomaReader) -> dict[str, np.ndarray]:
    """Columns that key the cells besides the obs names: a SOMA source's ``soma_joinid``."""
    if isinstance(reader, SomaReader):
        return {"soma_joinid": reader.row_joinids(0, reader.n_obs)}
    return {}


def source_identity(reader: StoreReader | SomaReader) -> dict:
    """What selects the cells beyond layer and gene key, for resuming (empty for AnnData)."""
    return dict(reader.selection) if isinstance(reader, SomaReader) else {}


def read_obs_names_at(location: str) -> pd.Index:
    """The ``obs`` index of the store at ``location`` (opened for this read only)."""
    root, _, handle = _open_root(location, "r")
    try:
        return _obs_names(root)
    finally:
        if isinstance(root, h5py.File):
            root.close()
        if handle is not None:
            handle.close()


def _obs_names(root) -> pd.Index:
    obs = root["obs"]
    index_key = obs.attrs.get("_index", "_index")
    return pd.Index([str(name) for name in read_elem(obs[index_key])])


__all__ = [
    "StoreReader",
    "aligned_block_rows",
    "block_bounds",
    "obs_names_source",
    "open_store",
    "read_obs_names",
    "read_obs_names_at",
    "source_columns",
    "source_identity",
]
_ = anndata  # anndata registers the element readers used above
