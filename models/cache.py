"""Turn registry names into verified local files: checksums, the download cache, verification.

Local entries are read from the registry's folder. Remote entries are
downloaded once (HTTP(S) with the standard library, other URLs with fsspec) into the cache folder, ``$SCNYM_CACHE`` or
``$XDG_CACHE_HOME/scnym`` (default ``~/.cache/scnym``): into a temporary file,
checked against the registry's sha256, then renamed into place, so a file in
the cache is always complete. Every use verifies the digest (remembered per
process for an unchanged file).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from tqdm.auto import tqdm

from .registry import Registry, RegistryEntry, RegistryError, as_registry, describe_names

logger = logging.getLogger(__name__)

#: Environment variable naming the download cache folder.
CACHE_ENV = "SCNYM_CACHE"
_CHUNK = 1 << 20
#: Seconds an HTTP(S) download waits for the server before it counts as unreachable.
_TIMEOUT_S = 60
#: Digests of files already hashed in this process: (path, mtime_ns, size) -> sha256.
_DIGESTS: dict[tuple[str, int, int], str] = {}

Status = Literal["local", "missing", "cached", "remote"]


class ChecksumError(RegistryError):
    """A file's sha256 differs from the one the registry records."""


def cache_dir() -> Path:
    """The download cache: ``$SCNYM_CACHE``, else ``$XDG_CACHE_HOME/scnym`` or ``~/.cache/scnym``."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "scnym"


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _stat_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


def _digest(path: Path) -> str:
    """sha256 of ``path``, computed once per process while the file is unchanged."""
    key = _stat_key(path)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(path)
    return _DIGESTS[key]


def entry_path(entry: RegistryEntry, registry: Registry) -> Path:
    """Where the entry's file is (local entries) or is cached (remote entries)."""
    if not entry.is_remote:
        return registry.root / entry.file
    basename = entry.file.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    basename = re.sub(r"[^A-Za-z0-9._-]", "_", basename).lstrip(".") or entry.name
    return cache_dir() / entry.name / basename


def entry_status(entry: RegistryEntry, registry: Registry) -> Status:
    """``'local'`` or ``'missing'`` (shipped file), ``'cached'`` or ``'remote'`` (downloaded)."""
    present = entry_path(entry, registry).is_file()
    if entry.is_remote:
        return "cached" if present else "remote"
    return "local" if present else "missing"


def available_locally(registry: Registry) -> list[RegistryEntry]:
    """Entries usable without network: shipped files present, remote files already cached."""
    return [e for e in registry.entries if entry_status(e, registry) in ("local", "cached")]


def _mismatch(entry: RegistryEntry, path: Path, actual: str, removed: bool) -> ChecksumError:
    action = "it was removed; fetch it again" if removed else "restore or reinstall the file"
    return ChecksumError(
        f"Checksum mismatch for {entry.name!r} ({path}): the registry expects sha256 "
        f"{entry.sha256}, the file has {actual}; {action}"
    )


def resolve(
    name: str,
    registry: Registry | str | os.PathLike | None = None,
    kind: str | None = None,
    progress: bool = True,
) -> Path:
    """The verified local file of a registry model or atlas, downloading it if needed.

    Parameters
    ----------
    name
        An entry name or alias; ``pretrained_{species}`` / ``atlas_{species}``
        also find the first model / atlas of that species.
    registry
        A :class:`~scnym.models.Registry`, a registry file, or None for the
        default (``$SCNYM_REGISTRY`` or the packaged one).
    kind
        Accept only ``'model'`` or ``'atlas'`` entries.
    progress
        Show a progress bar while downloading.

    Raises
    ------
    RegistryError
        For an unknown name (the message lists the available ones), a missing
        shipped file, or a download that fails (the message lists the entries
        available offline).
    ChecksumError
        When the file's sha256 differs from the registry's; a downloaded file
        that differs is removed.
    """
    registry = as_registry(registry)
    entry = registry.get(name, kind)
    path = entry_path(entry, registry)
    if not entry.is_remote:
        if not path.is_file():
            raise RegistryError(
                f"The file of {entry.name!r} ({path}) is missing: reinstall scnym or restore it"
            )
        actual = _digest(path)
        if actual != entry.sha256:
            raise _mismatch(entry, path, actual, removed=False)
        return path
    if path.is_file():
        if _digest(path) == entry.sha256:
            return path
        logger.warning("Cached %s does not match the registry's sha256: downloading it again", path)
        path.unlink()
    _download(entry, path, registry, progress)
    return path


def model_file(name: str) -> Path:
    """The verified file of the registry model ``name``: the resolver of model names.

    ``scnym.infer`` finds it through the ``scnym.model_resolvers`` entry point
    (it cannot import the registry), so that every verb and function that takes
    a model takes a registry name too.

    Raises
    ------
    RegistryError
        If the registry has no model of that name (the message lists them).
    """
    registry = as_registry(None)
    if registry.find(name, kind="model") is None:
        listed = ", ".join(registry.names("model")) or "none"
        raise RegistryError(
            f"--model {name}: no such file, and not a registry model (registry models: {listed}); "
            "see `scnym models list`"
        )
    return resolve(name, registry, kind="model")


def fetch(
    name: str, registry: Registry | str | os.PathLike | None = None, progress: bool = True
) -> Path:
    """Download (if needed) and verify an entry; return its local file (see :func:`resolve`)."""
    return resolve(name, registry, progress=progress)


def _offline_error(entry: RegistryEntry, path: Path, registry: Registry, err: Exception):
    local = describe_names(available_locally(registry)) or "none"
    if isinstance(err, ImportError):  # fsspec has no backend for this protocol here
        cause = "fsspec cannot read this kind of URL here; install the package it names"
    else:
        cause = "this machine seems to be offline, or the URL is unreachable"
    return RegistryError(
        f"Cannot download {entry.name!r} from {entry.file} ({type(err).__name__}: {err}): "
        f"{cause}. Available locally: {local}. "
        f"To use {entry.name!r} here, run `scnym models fetch {entry.name}` on a machine with "
        f"network access and copy the file to {path} (${CACHE_ENV} sets the cache folder)."
    )


def _open_url(url: str) -> BinaryIO:
    """A readable stream of ``url``: plain HTTP(S) through the standard library, else fsspec.

    HTTP(S) is read with ``urllib`` rather than fsspec: fsspec's HTTP backend needs
    aiohttp (not a dependency of the base install) and range requests, which not
    every server offers; one streamed GET needs neither.

    Raises
    ------
    _Refused
        When the server answers with an HTTP error.
    _Unreachable
        When nothing answers (offline, DNS, refused connection) or fsspec fails.
    """
    if url.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            return urllib.request.urlopen(url, timeout=_TIMEOUT_S)
        except urllib.error.HTTPError as err:
            raise _Refused(f"HTTP {err.code} {err.reason}") from err
        except OSError as err:  # URLError, timeouts and socket errors are OSErrors
            raise _Unreachable(err) from err
    try:
        import fsspec

        return fsspec.open(url, "rb").open()
    except Exception as err:  # fsspec backends raise their own types (botocore, gcsfs, ...)
        raise _Unreachable(err) from err


def _copy_url(entry: RegistryEntry, out: BinaryIO, progress: bool) -> str:
    """Copy the entry's URL into ``out``; return the sha256 of the bytes copied.

    At most one chunk (1 MiB) past the registry's ``size_bytes`` is read: a longer
    file fails its checksum, a much longer one is stopped there.

    Reading errors are raised as :class:`_Unreachable`, more bytes than the
    registry's size as :class:`_TooLarge`; writing errors as they are.
    """
    source = _open_url(entry.file)
    digest, copied = hashlib.sha256(), 0
    bar = tqdm(
        total=entry.size_bytes or None, unit="B", unit_scale=True, unit_divisor=1024,
        desc=f"Downloading {entry.name}", disable=not progress,
    )  # fmt: skip
    with source, bar:
        while True:
            try:
                chunk = source.read(_CHUNK)
            except Exception as err:
                raise _Unreachable(err) from err
            if not chunk:
                break
            copied += len(chunk)
            if entry.size_bytes and copied > entry.size_bytes + _CHUNK:
                raise _TooLarge(copied)  # a wrong file is not read to its end
            out.write(chunk)
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


class _Unreachable(Exception):
    """Reading the remote file failed (wraps the backend's error)."""

    def __init__(self, err: Exception) -> None:
        super().__init__(str(err))
        self.err = err


class _Refused(Exception):
    """The server answered, with an error."""


class _TooLarge(Exception):
    """The server sent more bytes than the registry says the file has."""


def _download(entry: RegistryEntry, path: Path, registry: Registry, progress: bool) -> None:
    """Download into a temporary file beside ``path``, verify, then rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                actual = _copy_url(entry, out, progress)
            except _Unreachable as wrapped:
                raise _offline_error(entry, path, registry, wrapped.err) from wrapped.err
            except _Refused as err:
                raise RegistryError(
                    f"The server of {entry.file} refused {entry.name!r} ({err}): the file "
                    "may have moved; check the registry entry, or ask whoever publishes it"
                ) from err
            except _TooLarge as err:
                raise RegistryError(
                    f"{entry.file} sent more than the {entry.size_bytes:,} bytes the registry "
                    f"gives for {entry.name!r}: stopped and removed; it is not the file the "
                    "registry describes"
                ) from err
        if actual != entry.sha256:
            raise _mismatch(entry, path, actual, removed=True)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a shared cache is read by others
        os.replace(tmp, path)
        _DIGESTS[_stat_key(path)] = actual
        logger.info("Downloaded %s to %s (sha256 verified)", entry.name, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class Verification:
    """The result of :func:`verify`."""

    name: str
    path: Path
    expected: str
    actual: str
    removed: bool

    @property
    def ok(self) -> bool:
        return self.actual == self.expected


def verify(name: str, registry: Registry | str | os.PathLike | None = None) -> Verification:
    """Recompute the sha256 of an entry's local or cached file and compare it with the registry.

    A cached download that does not match is removed (a shipped file is left
    alone). Nothing is downloaded.

    Raises
    ------
    RegistryError
        For an unknown name, a missing shipped file, or a remote entry not in
        the cache yet.
    """
    registry = as_registry(registry)
    entry = registry.get(name)
    path = entry_path(entry, registry)
    if not path.is_file():
        if entry.is_remote:
            raise RegistryError(
                f"{entry.name!r} is not in the cache ({path}) yet: "
                f"run `scnym models fetch {entry.name}` first"
            )
        raise RegistryError(f"The file of {entry.name!r} ({path}) is missing")
    actual = sha256_file(path)
    _DIGESTS[_stat_key(path)] = actual
    removed = False
    if actual != entry.sha256 and entry.is_remote:
        path.unlink()
        removed = True
    return Verification(entry.name, path, entry.sha256, actual, removed)
