"""Public names of a package that load on first use (PEP 562).

Written here rather than taken from ``lazy_loader``: ten lines do not warrant
another dependency of the torch-free base install.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(
    package: str, exports: dict[str, str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """A module ``__getattr__`` and ``__dir__`` serving ``exports`` (name -> submodule).

    Examples
    --------
    >>> __getattr__, __dir__ = lazy_exports(__name__, {"annotate": "annotation"})  # doctest: +SKIP
    """

    def __getattr__(name: str) -> object:
        if name in exports:
            return getattr(importlib.import_module(f".{exports[name]}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(importlib.import_module(package))) | set(exports))

    return __getattr__, __dir__
