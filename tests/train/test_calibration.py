"""Calibration: the temperature, the Unknown threshold, and their trip through the model files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import softmax
from scnym.api import scnym_api
from scnym.calibration import (
    MIN_CELLS,
    calibrate,
    expected_calibration_error,
    fit_temperature,
)
from scnym.modeldir import load_model_dir
from scnym.prediction import model_outputs
from synthetic import make_counts


def _overconfident(n: int = 4000, factor: float = 3.0, seed: int = 0):
    """Logits whose true temperature is ``factor``: labels drawn from softmax(logits / factor)."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0, 2, size=(n, 5))
    labels = np.array([rng.choice(5, p=p) for p in softmax(true_logits, axis=1)])
    return true_logits * factor, labels


def test_the_fitted_temperature_is_the_true_one():
    logits, labels = _overconfident(factor=3.0)
    assert fit_temperature(logits, labels) == pytest.approx(3.0, rel=0.1)
    assert fit_temperature(logits / 3.0, labels) == pytest.approx(1.0, rel=0.1)


def test_calibration_lowers_the_error_and_the_threshold_flags_the_stated_share():
    logits, labels = _overconfident(factor=3.0)
    result = calibrate(logits[:2000], labels[:2000], logits[2000:], labels[2000:], flag_rate=0.05)
    assert result.ece_after < result.ece_before / 2
    confidence = softmax(logits[2000:] / result.temperature, axis=1).max(axis=1)
    assert np.mean(confidence < result.confidence_threshold) == pytest.approx(0.05, abs=0.005)
    assert expected_calibration_error(softmax(logits / 3.0, axis=1), labels) < 0.05


def test_too_few_held_out_cells_keep_the_model_as_it_is():
    logits, labels = _overconfident(n=MIN_CELLS * 2)
    few = calibrate(logits[:5], labels[:5], logits[5:], labels[5:])
    assert few.temperature == 1.0 and few.confidence_threshold is None


def test_training_records_it_and_prediction_uses_it(tmp_path):
    adata = make_counts(n_cells=600, n_genes=40, n_classes=3, seed=5)
    config = {"n_epochs": 3, "ssl_kwargs": {"min_epochs": 0}}
    scnym_api(adata, task="train", groupby="label", out_path=str(tmp_path / "m"), config=config)
    manifest = json.loads((tmp_path / "m" / "scnym_model.json").read_text())
    calibration = manifest["calibration"]
    assert calibration["temperature"] > 0 and calibration["n_check_cells"] >= MIN_CELLS
    assert manifest["confidence_threshold"] == calibration["confidence_threshold"]
    scnym_api(adata, task="predict", trained_model=str(tmp_path / "m"))
    bundle = load_model_dir(tmp_path / "m")
    assert bundle.temperature == calibration["temperature"]
    from scnym.infer.memory import model_inputs

    logits, _ = model_outputs(bundle.model, model_inputs(adata, bundle.gene_names)[0])
    expected = softmax(logits / bundle.temperature, axis=1).max(axis=1)
    np.testing.assert_allclose(adata.obs["scNym_confidence"], expected, rtol=1e-5)
    # a model directory written before calibration reads as uncalibrated
    del manifest["calibration"]
    (tmp_path / "m" / "scnym_model.json").write_text(json.dumps(manifest))
    assert load_model_dir(tmp_path / "m").temperature == 1.0
