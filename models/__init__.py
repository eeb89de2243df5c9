"""The registry of scNym models and reference atlases (torch-free).

``registry.json`` beside this module (or the file ``$SCNYM_REGISTRY`` names)
lists each model (an ONNX file written by ``scnym export``) and reference atlas
(an h5ad of labeled log1p(CPM) cells) with its species, genes, classes,
training data, licence and sha256. :func:`resolve` turns a name (or an alias
such as ``'pretrained_human'``) into a verified local file, downloading a
remote entry once into the cache (``$SCNYM_CACHE``, default
``~/.cache/scnym``).

Examples
--------
>>> from scnym.models import load_registry, resolve
>>> load_registry().names()  # doctest: +SKIP
>>> resolve("pretrained_human")  # doctest: +SKIP
"""

from .authoring import add_entry, entry_for_file
from .cache import (
    ChecksumError,
    Verification,
    cache_dir,
    entry_path,
    entry_status,
    fetch,
    model_file,
    resolve,
    verify,
)
from .registry import (
    Registry,
    RegistryEntry,
    RegistryError,
    TrainedOn,
    default_registry_path,
    load_registry,
)

__all__ = [
    "ChecksumError",
    "Registry",
    "RegistryEntry",
    "RegistryError",
    "TrainedOn",
    "Verification",
    "add_entry",
    "cache_dir",
    "default_registry_path",
    "entry_for_file",
    "entry_path",
    "entry_status",
    "fetch",
    "load_registry",
    "model_file",
    "resolve",
    "verify",
]
