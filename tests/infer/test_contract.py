"""The ONNX contract's rules: how gene identifiers are told apart, and the result keys."""

from __future__ import annotations

import pandas as pd
import pytest
from scnym.infer.contract import (
    DEFAULT_KEY_ADDED,
    EMBEDDING_KEY,
    ResultKeys,
    gene_id_type,
)


@pytest.mark.parametrize(
    ("genes", "expected"),
    [
        (["ENSG00000141510", "ENSG00000111640"], "ensembl"),
        (["ENSG00000141510.17", "ENSMUSG00000059552.3"], "ensembl"),  # version suffixes
        (pd.Index(["ENSMUSG00000059552", "ENSDARG00000002403"]), "ensembl"),  # mouse, fish
        (["TP53", "CD4", "Gapdh"], "symbol"),
        ([], "symbol"),
        (["ENSG00000141510", "ENSG00000111640", "TP53"], "ensembl"),  # most are IDs
        (["ENSG00000141510", "TP53"], "symbol"),  # half is not most
        (["ENSG123", "ENSG00000141510x", "ensg00000141510"], "symbol"),  # not IDs
    ],
)
def test_gene_id_type(genes, expected):
    assert gene_id_type(genes) == expected


def test_gene_id_type_reads_any_iterable_once():
    assert gene_id_type(g for g in ["ENSG00000141510", "ENSG00000111640"]) == "ensembl"


def test_result_keys_are_named_after_key_added():
    keys = ResultKeys("pred")
    assert (keys.label, keys.confidence, keys.unknown, keys.novelty, keys.probabilities) == (
        "pred", "pred_confidence", "pred_unknown", "pred_novelty", "pred_probabilities",
    )  # fmt: skip
    assert keys.embedding == EMBEDDING_KEY == "X_scnym"  # whatever key_added
    assert ResultKeys().label == DEFAULT_KEY_ADDED == "scNym"
    assert ResultKeys().confidence == "scNym_confidence"
    assert ResultKeys().novelty == "scNym_novelty"


def test_unknown_label_is_gone():
    """The flag is a bool column now: no label stands for "not a reference type"."""
    import scnym.infer.contract as contract

    assert not hasattr(contract, "UNKNOWN_LABEL")
