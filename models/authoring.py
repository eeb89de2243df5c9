"""Write registry entries: describe a model or atlas file, and add it to a registry file.

Used by whoever ships models, not at prediction time::

    from scnym.models import add_entry, entry_for_file

    entry = entry_for_file("models/human_pbmc.onnx", "human_pbmc", "model",
                           aliases=["pretrained_human"], species="human", tissue="blood",
                           description="...", trained_on={"dataset": "..."}, license="...")
    add_entry(entry)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from scnym.infer.contract import gene_id_type
from scnym.infer.fileio import is_url, write_atomically

from .cache import ChecksumError, sha256_file
from .registry import (
    SCHEMA_VERSION,
    RegistryEntry,
    RegistryError,
    default_registry_path,
    parse_registry,
    read_registry_json,
)

#: Fields read from the file itself, never passed by the caller.
_FROM_FILE = ("sha256", "size_bytes", "n_genes", "classes")


def _model_fields(path: Path) -> dict[str, Any]:
    from scnym.infer import read_metadata

    meta = read_metadata(path)
    data = meta.get("training", {}).get("data", {})
    trained_on = {}
    if "n_cells" in data:
        trained_on["n_cells"] = int(data["n_cells"])
    if "cells_per_class" in data:
        trained_on["cells_per_class"] = {str(k): int(v) for k, v in data["cells_per_class"].items()}
    fields = {
        "n_genes": len(meta["genes"]),
        "classes": list(meta["classes"]),
        "gene_id_type": meta.get("gene_id_type") or gene_id_type(meta["genes"]),
        "trained_on": trained_on,
    }
    version = meta.get("producer", {}).get("version")
    if version:
        fields["scnym_version"] = version
    return fields


def _atlas_fields(path: Path, label_key: str | None) -> dict[str, Any]:
    import anndata

    if not label_key:
        raise RegistryError("An atlas entry needs label_key: the obs column of its cell types")
    atlas = anndata.read_h5ad(path, backed="r")
    try:
        if label_key not in atlas.obs.columns:
            raise RegistryError(
                f"{path} has no obs column {label_key!r} (columns: {list(atlas.obs.columns)})"
            )
        labels = atlas.obs[label_key].astype(str)
        counts = labels.value_counts()
        genes = [str(g) for g in atlas.var_names]
        return {
            "n_genes": atlas.n_vars,
            "classes": sorted(counts.index.tolist()),
            "gene_id_type": gene_id_type(genes),
            "trained_on": {
                "n_cells": atlas.n_obs,
                "cells_per_class": {str(k): int(v) for k, v in sorted(counts.items())},
            },
        }
    finally:
        atlas.file.close()


def _relative_file(path: Path, registry_path: Path) -> str:
    try:
        return path.resolve().relative_to(registry_path.resolve().parent).as_posix()
    except ValueError as err:
        raise RegistryError(
            f"{path} is not inside the registry folder {registry_path.parent}: move it there, or "
            "pass file='https://...' (the URL it will be served from)"
        ) from err


def entry_for_file(
    path: str | os.PathLike,
    name: str,
    kind: str,
    *,
    registry_path: str | os.PathLike | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """Describe a model (ONNX) or atlas (h5ad) file as a validated registry entry.

    The digest, size, gene count and classes are read from the file: for a
    model from its ONNX metadata (also its gene id type, training cells and
    producing scnym version), for an atlas from the h5ad (labels in
    ``obs[label_key]``, cells per label).

    Parameters
    ----------
    path
        The local file.
    name
        The entry's name.
    kind
        ``'model'`` or ``'atlas'``.
    registry_path
        The registry the entry is for (default: ``$SCNYM_REGISTRY`` or the
        packaged one); ``file`` defaults to ``path`` relative to its folder.
    **fields
        The other fields: ``species``, ``tissue``, ``description``,
        ``license`` and ``trained_on`` (at least ``{"dataset": ...}``; the
        cell counts are filled in from the file when absent) are required;
        ``aliases``, ``label_key`` (atlases), ``file`` (a URL for a remote
        entry), ``gene_id_type`` and ``scnym_version`` are optional.

    Returns
    -------
    The entry as a JSON-ready dict (pass it to :func:`add_entry`).

    Raises
    ------
    RegistryError
        For an invalid field, a field that is read from the file, or a local
        file outside the registry folder without a ``file`` URL.
    """
    path = Path(path)
    given = sorted(set(fields) & set(_FROM_FILE))
    if given:
        raise RegistryError(f"{given[0]!r} is read from {path}: do not pass it")
    if kind == "model":
        derived = _model_fields(path)
    elif kind == "atlas":
        derived = _atlas_fields(path, fields.get("label_key"))
    else:
        raise RegistryError(f"kind must be 'model' or 'atlas', not {kind!r}")
    trained_on = {**derived.pop("trained_on"), **dict(fields.pop("trained_on", None) or {})}
    if "file" not in fields:
        registry = Path(registry_path) if registry_path else default_registry_path()
        fields["file"] = _relative_file(path, registry)
    from scnym import __version__

    entry = {
        "name": name,
        "kind": kind,
        "aliases": [],
        "scnym_version": __version__,
        **derived,
        **fields,
        "sha256": sha256_file(path),
        "size_bytes": path.stat().st_size,
        "trained_on": trained_on,
    }
    return RegistryEntry.from_dict(entry, where=str(path)).to_dict()


def add_entry(entry: dict[str, Any], registry_path: str | os.PathLike | None = None) -> Path:
    """Validate ``entry`` and write it into a registry file (in place of an entry of that name).

    A local entry's file must be in the registry's folder with the digest the
    entry records. The file is written atomically (a missing one is created).

    Parameters
    ----------
    entry
        A dict as returned by :func:`entry_for_file`.
    registry_path
        The registry file (default: ``$SCNYM_REGISTRY`` or the packaged one).

    Returns
    -------
    The registry file written.

    Raises
    ------
    RegistryError
        If the entry or the resulting registry is invalid, or a local file is missing.
    ChecksumError
        If a local file's digest differs from the entry's.
    """
    path = Path(registry_path) if registry_path else default_registry_path()
    parsed = RegistryEntry.from_dict(entry, where=str(path))
    if path.exists():
        data = read_registry_json(path)
        parse_registry(data, path)
    else:
        data = {"schema_version": SCHEMA_VERSION, "entries": []}
    # In place when replacing: the order decides which model `pretrained_{species}` finds.
    entries = [parsed.to_dict() if e.get("name") == parsed.name else e for e in data["entries"]]
    if all(e.get("name") != parsed.name for e in data["entries"]):
        entries.append(parsed.to_dict())
    data = {"schema_version": SCHEMA_VERSION, "entries": entries}
    parse_registry(data, path)
    if not is_url(parsed.file):
        local = path.parent / parsed.file
        if not local.is_file():
            raise RegistryError(f"The file of {parsed.name!r} ({local}) does not exist")
        actual = sha256_file(local)
        if actual != parsed.sha256:
            raise ChecksumError(
                f"{local} has sha256 {actual}, but the entry {parsed.name!r} says {parsed.sha256}"
            )
    return write_atomically(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
