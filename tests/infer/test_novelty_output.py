"""Models exported before the novelty score: still annotated, flagged by confidence, and said so."""

from __future__ import annotations

import logging
import shutil

import anndata
import numpy as np
import pytest
from annotation_checks import check_equal
from scnym.infer import OnnxModel, annotate
from scnym.infer.memory import predict_adata

WARNING = "exported without the novelty score"


@pytest.fixture(scope="module")
def older_onnx(onnx_model, tmp_path_factory):
    """The shared fixture's model exported as before the score: its model directory (beside
    the ONNX file, tests/conftest.py) without ``scnym_novelty.npz``."""
    from scnym.export import export_model
    from scnym.novelty import NOVELTY_FILE

    root = tmp_path_factory.mktemp("older")
    shutil.copytree(onnx_model.parent / "model", root / "model")
    (root / "model" / NOVELTY_FILE).unlink()
    export_model(root / "model", root / "older.onnx")
    return root / "older.onnx"


def test_an_older_export_has_no_score_and_a_confidence_threshold(older_onnx, onnx_model):
    older, current = OnnxModel(older_onnx), OnnxModel(onnx_model)
    assert current.has_novelty and not older.has_novelty
    assert not older.metadata.get("novelty")
    assert older.unknown_threshold == older.metadata["confidence_threshold"]
    assert current.unknown_threshold == current.metadata["novelty"]["threshold"]
    cells = np.ones((4, len(older.genes)), dtype=np.float32)
    assert older.run(cells).novelty is None and current.run(cells).novelty.shape == (4,)


def test_an_older_export_annotates_a_store_flagging_by_confidence(
    query, older_onnx, onnx_model, tmp_path, caplog
):
    store = tmp_path / "q.zarr"
    query.write_zarr(store)
    with caplog.at_level(logging.WARNING, logger="scnym.infer"):
        result = annotate(store, older_onnx, progress=False)
    assert any(WARNING in r.getMessage() for r in caplog.records)
    written = anndata.read_zarr(store)
    check_equal(written, query, older_onnx)  # labels, confidences, embedding; no _novelty
    assert "scNym_novelty" not in written.obs
    threshold = OnnxModel(older_onnx).unknown_threshold
    assert written.obs["scNym_unknown"].dtype == bool
    low = written.obs["scNym_confidence"].to_numpy() < threshold
    assert 0 < low.sum() < len(low)
    np.testing.assert_array_equal(written.obs["scNym_unknown"], low)
    assert result.record["novelty_score"] is False
    assert result.record["unknown_threshold"] == threshold
    assert "scNym_novelty" not in result.record["written"]["obs"]
    # the same weights: the model with the score gives the same labels and confidences
    current = annotate(query.copy(), onnx_model, progress=False).columns
    np.testing.assert_array_equal(result.labels.astype(str), current["scNym"].astype(str))
    np.testing.assert_array_equal(result.confidence, current["scNym_confidence"])


def test_an_older_export_in_memory_flags_by_confidence(query, older_onnx, caplog):
    with caplog.at_level(logging.WARNING, logger="scnym.infer"):
        predict_adata(query, older_onnx)
    assert any(WARNING in r.getMessage() for r in caplog.records)
    assert "scNym_novelty" not in query.obs
    threshold = OnnxModel(older_onnx).unknown_threshold
    np.testing.assert_array_equal(
        query.obs["scNym_unknown"], query.obs["scNym_confidence"].to_numpy() < threshold
    )


def test_a_current_model_does_not_warn(query, onnx_model, caplog):
    with caplog.at_level(logging.WARNING, logger="scnym.infer"):
        annotate(query, onnx_model, progress=False)
    assert not any(WARNING in r.getMessage() for r in caplog.records)


def test_annotating_again_with_an_older_export_leaves_no_stale_novelty(
    query, older_onnx, onnx_model, tmp_path
):
    store = tmp_path / "q.zarr"
    query.write_zarr(store)
    annotate(store, onnx_model, progress=False)
    again = annotate(store, older_onnx, progress=False)
    assert "scNym_novelty" not in anndata.read_zarr(store).obs
    assert "obs/scNym_novelty" in again.record["removed"]
