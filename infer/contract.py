"""The contract between training and production, in one place.

An exported ONNX file is the only thing training hands to production. This
module names what such a file holds (metadata keys and layout version, graph
inputs and outputs, how gene identifiers are told apart) and the AnnData keys
every part writes its results under. Training, export, the registry and
annotation all read these names from here.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

#: Prefix of the metadata keys scNym writes into ONNX ``metadata_props``.
META_PREFIX = "scnym."
#: Layout version of the metadata; readers refuse newer ones.
FORMAT_VERSION = 1

#: Metadata key of the digest that seals the rest of the metadata.
DIGEST_KEY = "metadata_sha256"


def metadata_digest(metadata: Mapping[str, Any]) -> str:
    """sha256 of the metadata (its digest key left out) as canonical JSON.

    The metadata includes ``weights_sha256``, so the digest covers the weights'
    hash, the genes, the classes and every other field: a file edited after
    export no longer matches it.
    """
    sealed = {key: value for key, value in metadata.items() if key != DIGEST_KEY}
    # through JSON and back, so that the writer (Python values) and the reader
    # (decoded JSON) hash the same text
    canonical = json.dumps(json.loads(json.dumps(sealed, sort_keys=True)), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


#: What a graph reads: raw counts and each cell's total, or log1p(CPM) values.
InputMode = Literal["counts", "log1p_cpm"]
INPUT_MODES: tuple[str, ...] = ("counts", "log1p_cpm")
#: Graph input names of each input mode, in order.
INPUT_NAMES: dict[str, tuple[str, ...]] = {
    "counts": ("counts", "total_counts"),
    "log1p_cpm": ("log1p_cpm",),
}
#: Graph output names every exported model has, in order.
OUTPUT_NAMES: tuple[str, str, str] = ("probabilities", "embedding", "predicted_class")
#: The optional fourth output: each cell's novelty score (models exported since the
#: score exists; older files lack it).
NOVELTY_OUTPUT = "novelty"

#: An Ensembl gene ID (``ENSG00000141510``, ``ENSMUSG00000059552.3``).
ENSEMBL_GENE_ID = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")


def gene_id_type(genes: Iterable[object]) -> Literal["ensembl", "symbol"]:
    """``'ensembl'`` when most of ``genes`` are Ensembl gene IDs, else ``'symbol'``."""
    names = [str(g) for g in genes]
    hits = sum(bool(ENSEMBL_GENE_ID.match(g)) for g in names)
    return "ensembl" if names and hits > len(names) / 2 else "symbol"


#: Least fraction of a model's genes the data must hold, unless the user lowers it.
DEFAULT_MIN_GENE_OVERLAP = 0.5
#: Default name of the label column (``key_added``), as in scNym 0.3.2.
DEFAULT_KEY_ADDED = "scNym"
#: ``obsm`` key of the embedding (the penultimate layer).
EMBEDDING_KEY = "X_scnym"
#: ``uns`` key of in-memory prediction's probability table (scNym 0.3.2's).
PROBABILITIES_UNS_KEY = "scNym_probabilities"
#: ``uns`` key of the training results dict.
TRAIN_RESULTS_KEY = "scNym_train_results"
#: ``uns`` key of ``scnym explain``'s ranking (scanpy's ``rank_genes_groups`` structure).
DEFAULT_EXPLAIN_KEY = "scNym_rank_genes"
#: ``uns`` key of the record a streaming annotation run leaves.
ANNOTATE_RECORD_KEY = "scNym_annotate"
#: ``layer`` that reads ``adata.raw`` (unless the data has a layer of that name).
RAW_LAYER = "raw"


@dataclass(frozen=True)
class ResultKeys:
    """The AnnData keys of one set of predictions, named after ``key_added``.

    Examples
    --------
    >>> ResultKeys("scNym").confidence
    'scNym_confidence'
    """

    key_added: str = DEFAULT_KEY_ADDED

    @property
    def label(self) -> str:
        """``obs`` column of the predicted cell type."""
        return self.key_added

    @property
    def confidence(self) -> str:
        """``obs`` column of the predicted type's probability."""
        return f"{self.key_added}_confidence"

    @property
    def unknown(self) -> str:
        """``obs`` column (bool) flagging cells unlike the reference, or without counts."""
        return f"{self.key_added}_unknown"

    @property
    def novelty(self) -> str:
        """``obs`` column of the novelty score (higher = less like any reference type)."""
        return f"{self.key_added}_novelty"

    @property
    def probabilities(self) -> str:
        """``obsm`` key of the class probabilities (streaming annotation)."""
        return f"{self.key_added}_probabilities"

    @property
    def embedding(self) -> str:
        """``obsm`` key of the embedding (the same whatever ``key_added``)."""
        return EMBEDDING_KEY
