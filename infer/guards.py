"""What an annotation run must never destroy, checked before any work is done.

- The input store: an ``--output`` that is the store itself is refused, and a
  store is written in place only when it is local and writable.
- An existing output: refused unless ``overwrite``; it is replaced only once the
  new results are complete.
- The user's own keys: a store is written in place with new elements only. A
  key that already exists is replaced only when an earlier scNym run wrote it
  (its record in ``uns['scNym_annotate']`` lists what it wrote).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from anndata.io import read_elem

from .contract import ANNOTATE_RECORD_KEY, ResultKeys
from .fileio import is_url
from .store import StoreReader

#: Output kinds of ``--output`` (an AnnData, or the obs columns as a table).
OUTPUT_SUFFIXES = (".zarr", ".h5ad", ".parquet", ".csv")
TABLE_SUFFIXES = (".parquet", ".csv")
#: A ``key_added``: it names obs columns and groups on disk, so no ``/`` and no
#: leading ``_`` or ``.`` (anndata's private names).
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\- ]*$")


def _resolved(location: str) -> str:
    if is_url(location):
        return location.rstrip("/")
    return os.path.realpath(Path(location).expanduser())


def check_output(output: str | None, store: str | None, overwrite: bool = False) -> None:
    """Refuse an ``--output`` that would lose data or cannot be written, before any work.

    Raises
    ------
    ValueError
        For an unknown kind, parquet without pyarrow, the input store itself (or
        a path inside it), or an existing file or folder when ``overwrite`` is False.
    """
    if output is None:
        return
    suffix = Path(output).suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"--output must end in .zarr, .h5ad, .parquet or .csv, not {output!r}")
    if suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as err:
            raise ValueError("parquet output needs pyarrow: pip install 'scnym[parquet]'") from err
    target = _resolved(output)
    source = None if store is None else _resolved(store)
    if source is not None and (target == source or target.startswith(source.rstrip("/") + "/")):
        raise ValueError(
            f"--output {output} is the input store {store}: leave --output out to add the "
            "results to the store itself (new elements only), or choose another path"
        )
    if not is_url(output) and Path(output).exists() and not overwrite:
        raise ValueError(
            f"--output {output} exists: pass --overwrite to replace it, or choose another path"
        )


def check_writable(reader: StoreReader, output: str | None) -> None:
    """Refuse to annotate a remote or read-only store in place."""
    if output is None and not reader.writable:
        raise ValueError(
            f"{reader.location} is remote or read-only: pass --output to write the results "
            "elsewhere"
        )


def check_key_added(key_added: str) -> None:
    """Refuse a ``key_added`` that cannot name obs columns.

    Raises
    ------
    ValueError
        For an empty name, a ``/``, or a leading ``_`` or ``.``.
    """
    if not isinstance(key_added, str) or not _KEY.match(key_added):
        raise ValueError(
            f"--key-added {key_added!r} is not a usable name: use letters, digits, '_', '-', "
            "'.' or spaces, starting with a letter or digit (e.g. scNym)"
        )


@dataclass(frozen=True)
class KeysToWrite:
    """The elements a run adds to a store, and which of them replace earlier scNym results."""

    obs: tuple[str, ...]
    obsm: tuple[str, ...]
    replaced: tuple[str, ...] = ()
    #: ``kind/name`` of earlier results under the same ``key_added`` that this run does
    #: not write (an ``_unknown`` column, probabilities): removed, so none is left stale.
    stale: tuple[str, ...] = ()

    def as_record(self, earlier: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
        """``{'obs': [...], 'obsm': [...]}``: these keys with those of ``earlier`` runs."""
        earlier = earlier or {}
        return {
            kind: sorted(
                {*earlier.get(kind, []), *getattr(self, kind)}
                - {key.split("/", 1)[1] for key in self.stale if key.startswith(f"{kind}/")}
            )
            for kind in ("obs", "obsm")
        }


def keys_to_write(
    key_added: str, wide: tuple[str, ...], unknown: bool, novelty: bool = False
) -> KeysToWrite:
    """The obs columns and obsm arrays a run writes (``wide``: the per-cell arrays kept)."""
    keys = ResultKeys(key_added)
    obs = (keys.label, keys.confidence, *((keys.novelty,) if novelty else ()),
           *((keys.unknown,) if unknown else ()))  # fmt: skip
    return KeysToWrite(obs, tuple(getattr(keys, name) for name in wide))


def earlier_keys(group) -> dict[str, list[str]]:
    """What earlier scNym runs wrote into ``group`` (empty when none did)."""
    uns = group["uns"] if "uns" in group else {}
    if ANNOTATE_RECORD_KEY not in uns:
        return {}
    return keys_in_record(read_elem(uns[ANNOTATE_RECORD_KEY]))


def keys_in_record(record: dict | None) -> dict[str, list[str]]:
    """The keys a run's record (``uns['scNym_annotate']``) says scNym wrote."""
    if not record:
        return {}
    if "written" in record:
        return {kind: [str(k) for k in record["written"].get(kind, [])] for kind in ("obs", "obsm")}
    # a record of scnym 1.0.0.dev0 before it listed its keys: what that version wrote
    keys = ResultKeys(str(record.get("key_added", "")))
    return {
        "obs": [keys.label, keys.confidence, keys.unknown],
        "obsm": [keys.embedding, keys.probabilities],
    }


def check_own_keys(reader: StoreReader, planned: KeysToWrite) -> KeysToWrite:
    """Refuse to replace keys of the store that no scNym run wrote (see :func:`check_keys`)."""
    root = reader.root
    present = {kind: set(root[kind].keys()) if kind in root else set() for kind in ("obs", "obsm")}
    return check_keys(reader.location, present, earlier_keys(root), planned)


def check_keys(
    where: str,
    present: dict[str, set[str]],
    ours: dict[str, list[str]],
    planned: KeysToWrite,
) -> KeysToWrite:
    """Refuse to replace keys that exist and no scNym run wrote; name those it replaces.

    Raises
    ------
    ValueError
        If an obs column or obsm key to be written exists and is the user's.
    """
    replaced, foreign = [], []
    for kind in ("obs", "obsm"):
        for key in getattr(planned, kind):
            if key in present[kind]:
                (replaced if key in ours.get(kind, []) else foreign).append(f"{kind}/{key}")
    if foreign:
        hint = "pass another --key-added, or " if foreign != ["obsm/X_scnym"] else ""
        raise ValueError(
            f"{where} already holds {', '.join(foreign)}, which no scNym run wrote: "
            f"{hint}pass --output to write the results elsewhere"
        )
    return KeysToWrite(planned.obs, planned.obsm, tuple(replaced), _stale(present, ours, planned))


def _stale(present: dict[str, set[str]], ours: dict[str, list[str]], planned) -> tuple[str, ...]:
    """Earlier scNym results of the planned ``key_added`` that this run does not rewrite."""
    keys = ResultKeys(planned.obs[0])
    family = (("obs", keys.novelty), ("obs", keys.unknown), ("obsm", keys.probabilities))
    return tuple(
        f"{kind}/{key}"
        for kind, key in family
        if key in present[kind] and key in ours.get(kind, []) and key not in getattr(planned, kind)
    )
