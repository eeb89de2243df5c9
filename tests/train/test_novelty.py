"""The novelty score: it flags a type the reference lacks, round-trips through the model files
and the ONNX graph, and gives way to the confidence where a model has none."""

from __future__ import annotations

import json
import logging
import shutil

import anndata
import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from scnym.api import scnym_api
from scnym.infer.contract import NOVELTY_OUTPUT
from scnym.infer.memory import model_inputs, predict_adata
from scnym.infer.model import OnnxModel, read_metadata
from scnym.modeldir import load_model_dir
from scnym.novelty import MIN_CELLS, NOVELTY_FILE, NoveltyFit, NoveltyScorer, fit_novelty
from scnym.prediction import model_outputs
from sklearn.metrics import roc_auc_score
from synthetic import make_counts

#: The type the reference lacks: its cells are left only among the unlabeled target cells.
MISSING = "type_3"


@pytest.fixture(scope="module")
def data() -> anndata.AnnData:
    """4 types with a domain shift; the labeled cells of ``type_3`` are dropped."""
    adata = make_counts(
        n_cells=1200, n_genes=80, n_classes=4, seed=3, unlabeled_fraction=0.4, shift=0.3
    )
    return adata[adata.obs["label"] != MISSING].copy()


@pytest.fixture(scope="module")
def model_dir(data, tmp_path_factory):
    """A model trained on the reference without ``type_3`` (about 5 s)."""
    out = tmp_path_factory.mktemp("novelty") / "model"
    scnym_api(data, task="train", groupby="label", out_path=str(out),
              config={"n_epochs": 15, "batch_size": 64})  # fmt: skip
    return out


@pytest.fixture(scope="module")
def exported(model_dir, tmp_path_factory):
    """The model exported to ONNX."""
    from scnym.export import export_model

    path = tmp_path_factory.mktemp("novelty_onnx") / "model.onnx"
    export_model(model_dir, path)
    return path


@pytest.fixture(scope="module")
def target(data, model_dir) -> anndata.AnnData:
    """The target cells (``type_3`` among them), predicted with the torch model directory."""
    cells = data[data.obs["domain"] == "target"].copy()
    scnym_api(cells, task="predict", trained_model=str(model_dir))
    return cells


def test_a_type_missing_from_the_reference_is_flagged(target):
    obs = target.obs
    novel = (obs["cell_type"] == MISSING).to_numpy()
    assert novel.sum() > 50 and (~novel).sum() > 300
    assert obs["scNym_novelty"].dtype == np.float32
    assert obs["scNym_unknown"].dtype == bool
    novelty_auroc = roc_auc_score(novel, obs["scNym_novelty"])
    confidence_auroc = roc_auc_score(novel, 1 - obs["scNym_confidence"])
    assert novelty_auroc > 0.95  # 0.999 with this seed
    assert novelty_auroc > confidence_auroc  # 0.875: the confidence alone misses many
    flagged = obs["scNym_unknown"].to_numpy()
    assert flagged[novel].mean() >= 0.8  # 1.0
    assert flagged[~novel].mean() <= 0.2  # 0.04: known types, under the domain shift
    # the label stays the best reference type: type_3 cells get one of the others
    assert set(obs["scNym"].astype(str)) <= {"type_0", "type_1", "type_2"}


@pytest.mark.parametrize("through", ["model_dir", "exported"])
def test_the_threshold_can_be_moved_or_dropped(data, model_dir, exported, through):
    trained = str(model_dir if through == "model_dir" else exported)
    cells = data[data.obs["domain"] == "target"].copy()
    scnym_api(cells, task="predict", trained_model=trained, unknown_threshold=float("inf"))
    assert not cells.obs["scNym_unknown"].any()
    median = float(np.median(cells.obs["scNym_novelty"]))
    scnym_api(cells, task="predict", trained_model=trained, unknown_threshold=median)
    np.testing.assert_array_equal(
        cells.obs["scNym_unknown"], cells.obs["scNym_novelty"].to_numpy() > median
    )
    fresh = data[data.obs["domain"] == "target"].copy()
    scnym_api(fresh, task="predict", trained_model=trained, unknown_threshold=None)
    assert "scNym_unknown" not in fresh.obs and "scNym_novelty" in fresh.obs


def test_the_threshold_and_the_score_round_trip(model_dir, exported, tmp_path):
    fit = load_model_dir(model_dir).novelty
    assert fit is not None and fit.flag_rate == 0.05 and np.isfinite(fit.threshold)
    fit.save(tmp_path)
    again = NoveltyFit.load(tmp_path)
    for name in ("means", "whitening", "center", "scale"):
        np.testing.assert_array_equal(getattr(again, name), getattr(fit, name))
    assert (again.threshold, again.flag_rate) == (fit.threshold, fit.flag_rate)
    assert NoveltyFit.load(tmp_path / "elsewhere") is None  # no file: no fit
    manifest = json.loads((model_dir / "scnym_model.json").read_text())["novelty"]
    assert manifest["threshold"] == fit.threshold
    assert (manifest["center"], manifest["scale"]) == (fit.center.tolist(), fit.scale.tolist())
    meta = read_metadata(exported)["novelty"]
    assert meta["threshold"] == fit.threshold and meta["flag_rate"] == fit.flag_rate
    model = OnnxModel(exported)
    assert model.has_novelty and NOVELTY_OUTPUT in model.output_names
    assert model.unknown_threshold == fit.threshold


def test_the_onnx_score_equals_the_torch_score(data, model_dir, exported):
    torch_side, onnx_side = data.copy(), data.copy()
    scnym_api(torch_side, task="predict", trained_model=str(model_dir))
    predict_adata(onnx_side, exported)
    expected = torch_side.obs["scNym_novelty"].to_numpy()
    got = onnx_side.obs["scNym_novelty"].to_numpy()
    relative = np.abs(got - expected) / np.maximum(np.abs(expected), 1)
    # float32 logits of the two runtimes differ by ~1e-6; the whitening amplifies that
    # (measured: 1.1e-5 here); the export's own parity check allows 1e-4
    assert relative.max() <= 1e-4
    np.testing.assert_array_equal(onnx_side.obs["scNym_unknown"], torch_side.obs["scNym_unknown"])
    np.testing.assert_array_equal(
        onnx_side.obs["scNym"].astype(str), torch_side.obs["scNym"].astype(str)
    )


def _with_model_genes_dropped(cells: anndata.AnnData, genes, share: float, seed: int = 0):
    """``cells`` with ``share`` of the model's genes zeroed in each cell, their counts moved to
    a gene the model does not read: each cell keeps its library size."""
    X = np.asarray(sparse.csr_matrix(cells.X).toarray())
    columns = cells.var_names.get_indexer(genes)
    rng = np.random.default_rng(seed)
    dropped = X.copy()
    for row in dropped:
        row[rng.choice(columns, size=int(share * len(columns)), replace=False)] = 0
    moved = X.sum(axis=1) - dropped.sum(axis=1)
    var = pd.DataFrame(index=[*cells.var_names, "not_a_model_gene"])
    out = anndata.AnnData(sparse.csr_matrix(np.hstack([dropped, moved[:, None]])),
                          obs=cells.obs[["cell_type", "domain"]].copy(), var=var)  # fmt: skip
    assert np.allclose(np.asarray(out.X.sum(axis=1)).ravel(), X.sum(axis=1))
    return out


def test_cells_holding_few_of_the_model_genes_are_not_confident_and_unflagged(target, model_dir):
    known = target[target.obs["cell_type"] != MISSING]
    genes = load_model_dir(model_dir).gene_names
    before = known.obs
    degraded = _with_model_genes_dropped(known, genes, share=0.9)
    scnym_api(degraded, task="predict", trained_model=str(model_dir))
    after = degraded.obs
    assert after["scNym_novelty"].mean() > before["scNym_novelty"].mean()  # 4.3 vs 0.005
    assert after["scNym_unknown"].mean() > before["scNym_unknown"].mean()  # 0.90 vs 0.04
    assert after["scNym_unknown"].mean() >= 0.8

    def confident_unflagged(obs):
        return ((obs["scNym_confidence"] >= 0.9) & ~obs["scNym_unknown"]).mean()

    # the confidence stays near 1 on these cells (two thirds are mislabeled): the flag must
    # catch them
    assert confident_unflagged(before) >= 0.8  # 0.96
    assert confident_unflagged(after) <= 0.2  # 0.10


def test_fit_novelty_needs_enough_held_out_cells(data, model_dir):
    bundle = load_model_dir(model_dir)
    X, _ = model_inputs(data, bundle.gene_names)
    labeled = data.obs["label"].to_numpy() != "Unlabeled"
    labels = pd.Categorical(data.obs["label"][labeled], categories=bundle.class_names).codes
    logits, _ = model_outputs(bundle.model, X[labeled])
    train, scale, threshold = logits[100:], logits[:50], logits[50:100]
    assert fit_novelty(train, labels[100:], scale[:5], threshold) is None
    assert fit_novelty(train, labels[100:], scale, threshold[: MIN_CELLS - 1]) is None
    fit = fit_novelty(train, labels[100:], scale[:MIN_CELLS], threshold[:MIN_CELLS])
    n_classes = len(bundle.class_names)
    assert fit is not None and fit.means.shape == fit.whitening.shape == (n_classes, n_classes)
    # the threshold flags flag_rate of the cells it was set on
    flagged = NoveltyScorer(fit).score(threshold[:MIN_CELLS]) > fit.threshold
    assert flagged.sum() == 1  # 5 % of 20


def _flags_by_confidence(adata, model_dir, caplog) -> np.ndarray:
    """Predict with a model directory without the score; returns the cells below its
    confidence threshold, which must be those flagged."""
    bundle = load_model_dir(model_dir)
    assert bundle.novelty is None and bundle.confidence_threshold is not None
    with caplog.at_level(logging.WARNING, logger="scnym"):
        scnym_api(adata, task="predict", trained_model=str(model_dir))
    assert any("trained without the novelty score" in r.getMessage() for r in caplog.records)
    obs = adata.obs
    assert "scNym_novelty" not in obs
    assert obs["scNym_unknown"].dtype == bool
    low = obs["scNym_confidence"].to_numpy() < bundle.confidence_threshold
    np.testing.assert_array_equal(obs["scNym_unknown"], low)
    return low


def test_too_few_held_out_cells_train_a_model_without_the_score(tmp_path, caplog):
    small = make_counts(n_cells=300, n_genes=60, n_classes=3, seed=11)
    out = tmp_path / "model"
    # 210 labeled cells: held-out splits of 10 cells, too few to fit the score (or to
    # calibrate: the preset's pseudolabel threshold 0.9 is the flag's)
    config = {"preset": "new_identity_discovery", "n_epochs": 2, "batch_size": 64,
              "ssl_kwargs": {"min_epochs": 0}, "val_fraction": 0.05, "test_fraction": 0.05}  # fmt: skip
    scnym_api(small, task="train", groupby="label", out_path=str(out), config=config)
    assert not (out / NOVELTY_FILE).exists()
    assert json.loads((out / "scnym_model.json").read_text())["novelty"] == {}
    assert load_model_dir(out).confidence_threshold == 0.9
    _flags_by_confidence(small, out, caplog)


def test_a_model_dir_of_before_the_score_flags_by_its_calibrated_confidence(
    data, model_dir, tmp_path, caplog
):
    older = tmp_path / "older"
    shutil.copytree(model_dir, older)
    (older / NOVELTY_FILE).unlink()
    cells = data[data.obs["domain"] == "target"].copy()
    calibrated = json.loads((older / "scnym_model.json").read_text())["calibration"]
    assert load_model_dir(older).confidence_threshold == calibrated["confidence_threshold"]
    low = _flags_by_confidence(cells, older, caplog)
    assert 0 < low.sum() < len(low)
