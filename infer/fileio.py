"""Where files are: fsspec URLs told from local paths, and atomic writes of local files."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

#: ``scheme://`` at the start of a location: any fsspec protocol (``s3``, ``gs``,
#: ``abfs``, ``https``, ``memory``, ``file``, ...), not a fixed list.
_URL = re.compile(r"^([a-z][a-z0-9+.-]*)://", re.IGNORECASE)


def is_url(location: str | os.PathLike) -> bool:
    """Whether ``location`` is an fsspec URL (``scheme://...``) rather than a local path."""
    return isinstance(location, str) and bool(_URL.match(location))


def write_atomically(path: str | os.PathLike, data: bytes | str, mode: int = 0o644) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place.

    Parameters
    ----------
    path
        Destination; its folder is created if needed.
    data
        Bytes, or text (written as UTF-8).
    mode
        Permissions of the file (``mkstemp`` alone would leave it private).

    Returns
    -------
    The destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path
