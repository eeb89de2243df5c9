"""The registry of models and reference atlases: its schema, loading and name lookup.

The registry is one JSON file, ``{"schema_version": 1, "entries": [...]}``. The
packaged one is ``registry.json`` beside this module; ``$SCNYM_REGISTRY`` may
name another (a site's own registry). Every entry is validated into a typed
:class:`RegistryEntry` when the file is read, so a malformed registry fails at
once with a :class:`RegistryError` that names the entry and the field.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from scnym.infer.fileio import is_url

#: Layout version of ``registry.json`` that this code reads and writes.
SCHEMA_VERSION = 1
#: File name of the packaged registry (beside this module).
REGISTRY_FILE = "registry.json"
#: Environment variable naming another registry file.
REGISTRY_ENV = "SCNYM_REGISTRY"
KINDS = ("model", "atlas")
GENE_ID_TYPES = ("symbol", "ensembl")
#: Prefixes of the ``{prefix}{species}`` names that pick the first entry of a species.
SPECIES_PREFIXES = {"pretrained_": "model", "atlas_": "atlas"}

Kind = Literal["model", "atlas"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class RegistryError(ValueError):
    """A registry file or entry is malformed, or a name is not in the registry."""


@dataclass(frozen=True)
class TrainedOn:
    """What a model was trained on (or an atlas built from).

    ``extra`` keeps any further keys of the JSON object (cells per condition,
    cells left out, ...) as they are.
    """

    dataset: str
    n_cells: int
    cells_per_class: dict[str, int]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "n_cells": self.n_cells,
            "cells_per_class": dict(self.cells_per_class),
            **self.extra,
        }


@dataclass(frozen=True)
class RegistryEntry:
    """One model or reference atlas of the registry.

    Attributes
    ----------
    name
        Unique name (letters, digits, ``.``, ``_``, ``-``).
    kind
        ``'model'`` (an ONNX file written by ``scnym export``) or ``'atlas'``
        (an h5ad of labeled log1p(CPM) cells).
    aliases
        Other names, such as ``'pretrained_human'`` or ``'atlas_human'``.
    species, tissue, description
        What the entry covers.
    file
        A path relative to the registry's folder, or an fsspec URL
        (``https://``, ``s3://``, ``memory://``, ...) downloaded into the cache.
    sha256, size_bytes
        Digest and size of the file; every use verifies the digest.
    n_genes, gene_id_type
        Number of genes and their identifiers (``'symbol'`` or ``'ensembl'``).
    classes
        Cell types the model predicts, or the labels of the atlas.
    label_key
        ``obs`` column of the atlas labels (atlases only).
    trained_on
        The data set, its number of cells and its cells per class.
    license
        Licence of the data (and of the model derived from it).
    scnym_version
        scnym version that produced the file.
    """

    name: str
    kind: Kind
    aliases: tuple[str, ...]
    species: str
    tissue: str
    description: str
    file: str
    sha256: str
    size_bytes: int
    n_genes: int
    gene_id_type: str
    classes: tuple[str, ...]
    label_key: str | None
    trained_on: TrainedOn
    license: str
    scnym_version: str

    @property
    def is_remote(self) -> bool:
        """Whether the file is downloaded (a URL) rather than shipped beside the registry."""
        return is_url(self.file)

    @property
    def names(self) -> tuple[str, ...]:
        """The name followed by the aliases."""
        return (self.name, *self.aliases)

    @classmethod
    def from_dict(cls, data: Any, where: str = "registry") -> RegistryEntry:
        """Validate a JSON entry and build it.

        Parameters
        ----------
        data
            The entry as read from JSON.
        where
            Where the entry comes from (the registry file), for error messages.

        Raises
        ------
        RegistryError
            Naming the entry and the field for a missing field, a value of the
            wrong type or format, or an unknown field.
        """
        if not isinstance(data, Mapping):
            raise RegistryError(f"{where}: an entry must be a JSON object, not {data!r:.60}")
        label = f"{where}: entry {data.get('name', '?')!r}"
        check = _FieldChecker(data, label)
        name = check.text("name")
        if not _NAME.match(name):
            raise check.error("name", "use letters, digits, '.', '_' and '-' only", name)
        kind = check.choice("kind", KINDS)
        aliases = check.text_list("aliases", required=False, allow_empty=True)
        for alias in aliases:
            if not _NAME.match(alias):
                raise check.error("aliases", "use letters, digits, '.', '_' and '-' only", alias)
        file = check.text("file")
        if not is_url(file):
            parts = PurePosixPath(file).parts
            if PurePosixPath(file).is_absolute() or ".." in parts or "\\" in file:
                raise check.error(
                    "file", "must be a relative path inside the registry folder or a URL", file
                )
        sha256 = check.text("sha256")
        if not _SHA256.match(sha256):
            raise check.error("sha256", "must be 64 lowercase hexadecimal digits", sha256)
        label_key = check.text("label_key", required=kind == "atlas")
        entry = cls(
            name=name,
            kind=kind,
            aliases=tuple(aliases),
            species=check.text("species"),
            tissue=check.text("tissue"),
            description=check.text("description"),
            file=file,
            sha256=sha256,
            size_bytes=check.integer("size_bytes", minimum=0),
            n_genes=check.integer("n_genes", minimum=1),
            gene_id_type=check.choice("gene_id_type", GENE_ID_TYPES),
            classes=tuple(check.text_list("classes")),
            label_key=label_key,
            trained_on=check.trained_on("trained_on"),
            license=check.text("license"),
            scnym_version=check.text("scnym_version"),
        )
        check.no_unknown_fields({f for f in cls.__dataclass_fields__})
        return entry

    def to_dict(self) -> dict[str, Any]:
        """The entry as JSON values (fields in schema order, ``label_key`` only for atlases)."""
        data = asdict(self)
        data["aliases"] = list(self.aliases)
        data["classes"] = list(self.classes)
        data["trained_on"] = self.trained_on.to_dict()
        if self.label_key is None:
            del data["label_key"]
        return data


class _FieldChecker:
    """Reads typed fields of one JSON entry, raising errors that name entry and field."""

    def __init__(self, data: Mapping[str, Any], label: str, prefix: str = "") -> None:
        self.data = data
        self.label = label
        self.prefix = prefix

    def error(self, field: str, problem: str, value: Any = None) -> RegistryError:
        shown = "" if value is None else f" (got {value!r:.80})"
        return RegistryError(f"{self.label} field {self.prefix + field!r}: {problem}{shown}")

    def _get(self, field: str, required: bool) -> Any:
        if field not in self.data or self.data[field] is None:
            if required:
                raise self.error(field, "is missing")
            return None
        return self.data[field]

    def text(self, field: str, required: bool = True) -> Any:
        value = self._get(field, required)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.error(field, "must be a non-empty string", value)
        return value

    def choice(self, field: str, choices: tuple[str, ...]) -> Any:
        value = self.text(field)
        if value not in choices:
            raise self.error(field, f"must be one of {list(choices)}", value)
        return value

    def integer(self, field: str, minimum: int) -> int:
        value = self._get(field, True)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(field, f"must be an integer >= {minimum}", value)
        return value

    def text_list(self, field: str, required: bool = True, allow_empty: bool = False) -> list:
        value = self._get(field, required)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.error(field, "must be a list of non-empty strings", value)
        if not value and not allow_empty:
            raise self.error(field, "must not be empty", value)
        if len(set(value)) != len(value):
            raise self.error(field, "holds repeated values", value)
        return value

    def trained_on(self, field: str) -> TrainedOn:
        value = self._get(field, True)
        if not isinstance(value, Mapping):
            raise self.error(field, "must be an object {dataset, n_cells, cells_per_class}", value)
        nested = _FieldChecker(value, self.label, prefix=f"{self.prefix}{field}.")
        dataset = nested.text("dataset")
        n_cells = nested.integer("n_cells", minimum=0)
        per_class = nested._get("cells_per_class", True)
        if not isinstance(per_class, Mapping) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in per_class.items()
        ):
            raise nested.error("cells_per_class", "must map class names to cell counts", per_class)
        extra = {
            k: v for k, v in value.items() if k not in ("dataset", "n_cells", "cells_per_class")
        }
        return TrainedOn(dataset, n_cells, dict(per_class), extra)

    def no_unknown_fields(self, known: set[str]) -> None:
        unknown = sorted(set(self.data) - known)
        if unknown:
            raise self.error(unknown[0], f"is not a registry field (known: {sorted(known)})")


@dataclass(frozen=True)
class Registry:
    """The validated entries of a registry file.

    Attributes
    ----------
    entries
        In file order (the order that decides ``pretrained_{species}``).
    path
        The registry file; local entries' files are relative to its folder.
    """

    entries: tuple[RegistryEntry, ...]
    path: Path

    @property
    def root(self) -> Path:
        """The folder local entries' files are relative to."""
        return self.path.parent

    def names(self, kind: str | None = None) -> list[str]:
        """Entry names (optionally of one kind), in file order."""
        return [e.name for e in self.entries if kind is None or e.kind == kind]

    def find(self, name: str, kind: str | None = None) -> RegistryEntry | None:
        """The entry called ``name`` (or with that alias), else None.

        ``pretrained_{species}`` also finds the first model of that species, and
        ``atlas_{species}`` the first atlas, when no entry has that name or alias.
        """
        candidates = [e for e in self.entries if kind is None or e.kind == kind]
        for entry in candidates:
            if name in entry.names:
                return entry
        for prefix, prefix_kind in SPECIES_PREFIXES.items():
            if name.startswith(prefix) and kind in (None, prefix_kind):
                species = name[len(prefix) :].lower()
                for entry in candidates:
                    if entry.kind == prefix_kind and entry.species.lower() == species:
                        return entry
        return None

    def get(self, name: str, kind: str | None = None) -> RegistryEntry:
        """Like :meth:`find`, but raise a :class:`RegistryError` listing the names when missing."""
        entry = self.find(name, kind)
        if entry is None:
            what = f"{kind} " if kind else ""
            listed = describe_names(e for e in self.entries if kind is None or e.kind == kind)
            raise RegistryError(
                f"No {what}{name!r} in the registry {self.path}; available: {listed or 'none'}"
                " (`scnym models list`)"
            )
        return entry


def describe_names(entries: Iterable[RegistryEntry]) -> str:
    """``'name (alias, alias), name2'``: entry names with their aliases, for messages."""
    return ", ".join(e.name + (f" ({', '.join(e.aliases)})" if e.aliases else "") for e in entries)


def default_registry_path() -> Path:
    """``$SCNYM_REGISTRY`` when set, else the packaged ``registry.json``."""
    override = os.environ.get(REGISTRY_ENV)
    if override:
        return Path(override).expanduser()
    return Path(str(importlib.resources.files(__package__) / REGISTRY_FILE))


def parse_registry(data: Any, path: Path) -> Registry:
    """Validate the decoded JSON of a registry file.

    Raises
    ------
    RegistryError
        For a wrong layout or schema version, a malformed entry, or a name or
        alias used twice.
    """
    where = str(path)
    if not isinstance(data, Mapping):
        raise RegistryError(f"{where}: the registry must be a JSON object")
    version = data.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise RegistryError(f"{where}: field 'schema_version' must be an integer (got {version!r})")
    if version > SCHEMA_VERSION:
        raise RegistryError(
            f"{where}: schema_version {version} is newer than this scnym reads "
            f"({SCHEMA_VERSION}): upgrade scnym"
        )
    raw_entries = data.get("entries")
    if not isinstance(raw_entries, list):
        raise RegistryError(f"{where}: field 'entries' must be a list")
    unknown = sorted(set(data) - {"schema_version", "entries"})
    if unknown:
        raise RegistryError(f"{where}: field {unknown[0]!r} is not a registry field")
    entries = tuple(RegistryEntry.from_dict(raw, where) for raw in raw_entries)
    owner: dict[str, str] = {}
    for entry in entries:
        for key, names in (("name", [entry.name]), ("aliases", entry.aliases)):
            for name in names:
                if name in owner:
                    raise RegistryError(
                        f"{where}: entry {entry.name!r} field {key!r}: {name!r} is already "
                        f"used by entry {owner[name]!r}"
                    )
                owner[name] = entry.name
    return Registry(entries, path)


def read_registry_json(path: str | os.PathLike) -> Any:
    """The decoded JSON of a registry file, with errors that name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise RegistryError(f"Registry file {path} does not exist (check ${REGISTRY_ENV})") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RegistryError(f"{path} is not valid JSON: {err}") from err


def load_registry(path: str | os.PathLike | None = None) -> Registry:
    """Read and validate a registry file.

    Parameters
    ----------
    path
        The JSON file; default :func:`default_registry_path` (``$SCNYM_REGISTRY``
        or the packaged registry).

    Raises
    ------
    RegistryError
        If the file is missing, not JSON, or not a valid registry.
    """
    path = Path(path) if path is not None else default_registry_path()
    return parse_registry(read_registry_json(path), path)


def as_registry(registry: Registry | str | os.PathLike | None) -> Registry:
    """A :class:`Registry` from a registry, a registry file, or None (the default one)."""
    return registry if isinstance(registry, Registry) else load_registry(registry)
