"""Write annotation results into the store (new elements only) or to an output file.

obs columns and the run's record are written with anndata's own writers
(``write_elem``). The embedding and probabilities were written block by block
into zarr arrays of the partial-results folder (:mod:`.partial`); into a local
zarr store of the same format they are moved, not copied, and into h5ad they are
copied chunk by chunk, so they are never held whole in memory.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
import zarr
from anndata.io import write_elem

from .blocks import BlockPlan
from .contract import ANNOTATE_RECORD_KEY, ResultKeys
from .guards import TABLE_SUFFIXES
from .partial import PartialResults
from .store import StoreReader, read_obs_names, source_columns

logger = logging.getLogger(__name__)


def wide_keys(output: str | None, write_probabilities: bool) -> tuple[str, ...]:
    """The per-cell arrays the output keeps (parquet and csv keep obs columns only)."""
    if output is not None and Path(output).suffix.lower() in TABLE_SUFFIXES:
        if write_probabilities:
            logger.warning(
                "%s is a table of obs columns: the probabilities are not written (use .zarr "
                "or .h5ad)", output,
            )  # fmt: skip
        return ()
    return ("embedding", "probabilities") if write_probabilities else ("embedding",)


def destination_zarr_format(reader: StoreReader, output: str | None) -> int:
    """The zarr format of the group the wide arrays end up in (3 when it is not zarr)."""
    if output is None:
        if isinstance(reader.root, zarr.Group):
            return int(reader.root.metadata.zarr_format)
        return 3
    if Path(output).suffix.lower() == ".zarr":
        return int(anndata.settings.zarr_write_format)
    return 3


def _local_folder(group) -> Path | None:
    """The folder of a zarr group on local disk (None for h5py or remote groups)."""
    if isinstance(group, zarr.Group) and isinstance(group.store, zarr.storage.LocalStore):
        return Path(group.store.root) / group.path
    return None


def _place_array(obsm, name: str, source: Path) -> None:
    """Put the zarr array at ``source`` into ``obsm[name]``, replacing what is there.

    Raises
    ------
    RuntimeError
        If ``source`` is gone and ``obsm`` lacks ``name``.
    """
    if not source.exists():
        if name in obsm:
            return  # moved in by the run that was stopped before it could clean up
        raise RuntimeError(
            f"{source} is missing from the partial results; delete {source.parent} and "
            "annotate again"
        )
    array = zarr.open_array(source, mode="r")
    if name in obsm:
        del obsm[name]
    folder = _local_folder(obsm)
    if folder is not None and obsm.metadata.zarr_format == array.metadata.zarr_format:
        shutil.move(source, folder / name)  # a rename: the blocks are not written twice
    else:
        write_elem(obsm, name, array, dataset_kwargs={"chunks": array.chunks})


def _gather(partial: PartialResults, plan: BlockPlan, key: str) -> np.ndarray:
    return np.concatenate([partial.load(start, [key])[key] for start, _ in plan.bounds])


def obs_columns(
    predicted: np.ndarray,
    confidence: np.ndarray,
    empty: np.ndarray,
    classes: list[str],
    key_added: str,
    unknown_threshold: float | None,
    novelty: np.ndarray | None = None,
) -> dict[str, object]:
    """The obs columns; cells without counts get no label, confidence and novelty NaN.

    The categories are the classes some cell received (scanpy's plots index
    their colours and groups by them). With a threshold, the bool ``_unknown``
    column flags cells whose novelty is above it (below it in confidence, for
    models without the score) and the cells without counts; the label stays the
    best reference type.
    """
    keys = ResultKeys(key_added)
    # codes, not strings: per-cell string arrays were most of the memory that grew
    # with the number of cells; code -1 is a missing label
    codes = np.where(empty, -1, predicted)
    confidence = np.where(empty, np.float32(np.nan), confidence)
    labels = pd.Categorical.from_codes(codes, categories=classes).remove_unused_categories()
    columns: dict[str, object] = {keys.label: labels, keys.confidence: confidence}
    if novelty is not None:
        novelty = np.where(empty, np.float32(np.nan), novelty).astype(np.float32)
        columns[keys.novelty] = novelty
    if unknown_threshold is not None:
        unlike = (
            novelty > unknown_threshold if novelty is not None else confidence < unknown_threshold
        )
        columns[keys.unknown] = np.asarray(empty | unlike, dtype=bool)
    return columns


def _clean_record(record: dict) -> dict:
    """uns-writable copy: None dropped, lists of str kept."""
    return {k: v for k, v in record.items() if v is not None}


def _write_into(group, columns, wide: dict[str, Path], record: dict) -> None:
    """Add the uns record, obs columns and obsm arrays (``wide``: name to zarr array).

    The record goes first: it lists the keys this run writes, so that a run
    killed while writing them finds them its own when it resumes. Earlier
    results it names ``removed`` (of the same key, not written again) go.
    """
    uns = group["uns"] if "uns" in group else group.create_group("uns")
    write_elem(uns, ANNOTATE_RECORD_KEY, _clean_record(record))
    obs = group["obs"]
    removed = [key.split("/", 1) for key in record.get("removed", [])]
    for kind, name in removed:
        if kind in group and name in group[kind]:
            del group[kind][name]
    for name, values in columns.items():
        write_elem(obs, name, values)
    gone = {name for kind, name in removed if kind == "obs"}
    order = [name for name in obs.attrs.get("column-order", []) if name not in gone]
    order += [name for name in columns if name not in order]
    obs.attrs["column-order"] = order  # written after the columns: readers see old or new
    obsm = group["obsm"] if "obsm" in group else group.create_group("obsm")
    for name, source in wide.items():
        _place_array(obsm, name, source)


def write_results(
    reader: StoreReader,
    partial: PartialResults,
    plan: BlockPlan,
    classes: list[str],
    key_added: str,
    output: str | None,
    record: dict,
    unknown_threshold: float | None,
    novelty: bool = False,
) -> tuple[str, dict[str, object], dict]:
    """Write the results of every block; returns (where, obs columns, record).

    ``novelty``: the blocks hold the novelty score (the model has one).
    """
    predicted = _gather(partial, plan, "predicted")
    empty = _gather(partial, plan, "empty")
    record = {**record, "n_cells_without_counts": int(empty.sum()), "classes": list(classes),
              "key_added": key_added}  # fmt: skip
    columns = obs_columns(
        predicted, _gather(partial, plan, "confidence"), empty, classes, key_added,
        unknown_threshold, _gather(partial, plan, "novelty") if novelty else None,
    )  # fmt: skip
    keys = ResultKeys(key_added)
    wide = {getattr(keys, key): partial.wide_path(key) for key in partial.wide.keys}
    if output is None:
        _write_into(reader.root, columns, wide, record)
        reader.reconsolidate()
        return reader.location, columns, record
    write_output(
        output, {**source_columns(reader), **columns}, read_obs_names(reader), record, wide
    )
    return output, columns, record


def write_output(
    output: str,
    columns: dict[str, object],
    obs_names: pd.Index,
    record: dict,
    wide: dict[str, Path | np.ndarray],
) -> None:
    """Write results to a new ``output``: the obs columns as a table, or an AnnData.

    ``wide`` maps obsm names to zarr arrays on disk (moved or copied in) or to
    arrays in memory. An existing output is replaced (the caller checked that
    it may be).
    """
    suffix = Path(output).suffix.lower()
    if suffix in TABLE_SUFFIXES:
        frame = pd.DataFrame(columns, index=obs_names)
        if suffix == ".csv":
            frame.to_csv(output)
        else:
            frame.to_parquet(output)
        Path(output).with_suffix(suffix + ".json").write_text(
            json.dumps(_clean_record(record), indent=1)
        )
        return
    in_memory = {name: values for name, values in wide.items() if isinstance(values, np.ndarray)}
    on_disk = {name: path for name, path in wide.items() if name not in in_memory}
    results = anndata.AnnData(obs=pd.DataFrame(index=obs_names), obsm=in_memory)
    if suffix == ".zarr":
        shutil.rmtree(output, ignore_errors=True)
        results.write_zarr(output)
        group = zarr.open_group(output, mode="r+", use_consolidated=False)
        _write_into(group, columns, on_disk, record)
        zarr.consolidate_metadata(output)
    else:
        results.write_h5ad(output)
        with h5py.File(output, "r+") as fh:
            _write_into(fh, columns, on_disk, record)
