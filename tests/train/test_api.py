"""The user API: training and prediction on AnnData, outputs, errors and copies."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse
from scnym.api import (
    CONFIGS,
    list_configs,
    scnym_api,
    scnym_predict,
    scnym_train,
)
from scnym.fitting import EVAL_BATCH_SIZE
from scnym.modeldir import MANIFEST_FILE, RESULTS_FILE, WEIGHTS_FILE
from synthetic import log1p_cpm, make_counts

FAST = {"n_epochs": 3, "batch_size": 32, "ssl_kwargs": {"min_epochs": 0}}


def _target_accuracy(adata) -> float:
    target = adata.obs["label"].to_numpy() == "Unlabeled"
    pred = adata.obs["scNym"].astype(str).to_numpy()[target]
    return float(np.mean(pred == adata.obs["cell_type"].astype(str).to_numpy()[target]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained on synthetic counts, and the data it was trained on."""
    adata = make_counts(n_cells=240, n_genes=40, seed=3)
    out = tmp_path_factory.mktemp("model")
    scnym_api(adata, task="train", groupby="label", out_path=str(out), config=FAST)
    return adata, out


def test_train_writes_model_directory_and_results(trained):
    adata, out = trained
    for name in (WEIGHTS_FILE, RESULTS_FILE, MANIFEST_FILE, "training_log.csv"):
        assert (out / name).is_file(), name
    assert (out / "training_curves.png").stat().st_size > 0
    results = adata.uns["scNym_train_results"]
    assert results["class_names"] == ["type_0", "type_1", "type_2"]
    assert results["gene_names"] == adata.var_names.tolist()
    assert results["n_genes"] == 40 and results["n_cell_types"] == 3
    assert 0.0 <= results["final_acc"] <= 1.0
    labeled = np.flatnonzero(adata.obs["label"].to_numpy() != "Unlabeled")
    held = set(results["traintest_idx"]) | set(results["val_idx"])
    assert held == set(labeled.tolist())
    # weights load safely, results pickle holds plain types only
    state = torch.load(out / WEIGHTS_FILE, weights_only=True)
    assert "classif.0.weight" in state
    with open(out / RESULTS_FILE, "rb") as fh:
        stored = pickle.load(fh)
    assert stored == results
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["preprocessing"]["input"] == "counts"
    assert manifest["data"]["cells_per_class"].keys() == {"type_0", "type_1", "type_2"}
    assert manifest["versions"]["torch"] == torch.__version__


def test_predict_writes_original_keys(trained):
    adata, out = trained
    query = adata.copy()
    scnym_api(query, task="predict", trained_model=str(out))
    assert list(query.obs["scNym"].cat.categories) == ["type_0", "type_1", "type_2"]
    conf = query.obs["scNym_confidence"].to_numpy()
    probs = query.uns["scNym_probabilities"]
    assert isinstance(probs, pd.DataFrame) and probs.shape == (query.n_obs, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(conf, probs.max(axis=1), atol=1e-6)
    assert query.obsm["X_scnym"].shape == (query.n_obs, 256)
    assert query.obsm["X_scnym"].dtype == np.float32 and query.obsm["X_scnym"].min() >= 0


def test_predict_is_invariant_to_gene_order_and_extra_genes(trained):
    adata, out = trained
    reference = adata.copy()
    scnym_api(reference, task="predict", trained_model=str(out))
    shuffled = adata[:, np.random.default_rng(0).permutation(adata.n_vars)].copy()
    scnym_api(shuffled, task="predict", trained_model=str(out))
    np.testing.assert_allclose(
        shuffled.uns["scNym_probabilities"].to_numpy(),
        reference.uns["scNym_probabilities"].to_numpy(),
        atol=1e-5,
    )


def test_predict_on_log1p_cpm_equals_predict_on_counts(trained):
    adata, out = trained
    counts = adata.copy()
    normed = log1p_cpm(adata)
    scnym_api(counts, task="predict", trained_model=str(out))
    scnym_api(normed, task="predict", trained_model=str(out))
    np.testing.assert_allclose(
        normed.obs["scNym_confidence"], counts.obs["scNym_confidence"], atol=1e-4
    )


def test_copy_returns_new_object_and_leaves_input_untouched(trained):
    adata, out = trained
    before = adata.copy()
    result = scnym_api(adata, task="predict", trained_model=str(out), copy=True)
    assert result is not adata and "scNym" in result.obs
    assert "scNym" not in adata.obs and "X_scnym" not in adata.obsm
    assert (adata.X != before.X).nnz == 0
    assert scnym_api(before, task="predict", trained_model=str(out)) is None
    assert "scNym" in before.obs


def test_dense_log1p_input_trains(tmp_path):
    adata = log1p_cpm(make_counts(n_cells=150, n_genes=30, seed=1))
    scnym_api(adata, task="train", groupby="label", out_path=str(tmp_path), config=FAST)
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert manifest["preprocessing"]["input"] == "log1p_cpm"


def test_sparse_input_is_never_densified_whole(tmp_path, monkeypatch):
    # more cells than an evaluation block, so that densifying the whole matrix is caught;
    # training densifies its batches, evaluation (held-out splits, the novelty score's
    # class statistics on the training split) blocks of EVAL_BATCH_SIZE rows
    adata = make_counts(n_cells=EVAL_BATCH_SIZE + 500, n_genes=30, seed=1)
    largest = max(FAST["batch_size"], EVAL_BATCH_SIZE)

    def refuse(self, *args, **kwargs):
        if self.shape[0] > largest:
            raise AssertionError(f"densified {self.shape[0]} rows at once")
        return original(self, *args, **kwargs)

    original = sparse.csr_matrix.toarray
    monkeypatch.setattr(sparse.csr_matrix, "toarray", refuse)
    scnym_api(
        adata,
        task="train",
        groupby="label",
        out_path=str(tmp_path),
        config={**FAST, "preset": "no_new_identity"},
    )


def test_fewer_unlabeled_cells_than_a_batch_trains(tmp_path):
    adata = make_counts(n_cells=200, n_genes=30, seed=2, unlabeled_fraction=0.03)
    assert (adata.obs["label"] == "Unlabeled").sum() == 6
    scnym_api(
        adata,
        task="train",
        groupby="label",
        out_path=str(tmp_path),
        config={"n_epochs": 2, "ssl_kwargs": {"min_epochs": 0}},
    )
    assert adata.uns["scNym_train_results"]["n_epochs_run"] == 2


def test_no_unlabeled_cells_trains_supervised(tmp_path):
    adata = make_counts(n_cells=150, n_genes=30, seed=2, unlabeled_fraction=0.0)
    scnym_api(adata, task="train", groupby="label", out_path=str(tmp_path), config=FAST)
    assert not (tmp_path / "02_best_dan_weights.pkl").exists()


def test_domain_groupby_with_several_domains(tmp_path):
    adata = make_counts(n_cells=240, n_genes=30, seed=4)
    adata.obs["batch"] = np.array(["a", "b", "c"])[np.arange(adata.n_obs) % 3]
    scnym_api(
        adata,
        task="train",
        groupby="label",
        domain_groupby="batch",
        out_path=str(tmp_path),
        config={**FAST, "preset": "no_new_identity"},
    )
    dan = torch.load(tmp_path / "02_best_dan_weights.pkl", weights_only=True)
    assert dan["domain_clf.2.weight"].shape[0] == 3
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert manifest["data"]["cells_per_domain"] == {"a": 80, "b": 80, "c": 80}


def test_same_seed_gives_same_model(tmp_path):
    probs = []
    for run in range(2):
        adata = make_counts(n_cells=200, n_genes=30, seed=5)
        out = tmp_path / str(run)
        config = {**FAST, "seed": 7, "preset": "no_new_identity"}
        scnym_api(adata, task="train", groupby="label", out_path=str(out), config=config)
        scnym_api(adata, task="predict", trained_model=str(out))
        probs.append(adata.uns["scNym_probabilities"].to_numpy())
    np.testing.assert_array_equal(probs[0], probs[1])


def test_split_column_fixes_the_splits(tmp_path):
    adata = make_counts(n_cells=200, n_genes=30, seed=6)
    labeled = np.flatnonzero(adata.obs["label"].to_numpy() != "Unlabeled")
    split = np.array(["train"] * adata.n_obs, dtype=object)
    split[labeled[:15]] = "val"
    split[labeled[15:30]] = "test"
    adata.obs["scNym_split"] = split
    scnym_api(adata, task="train", groupby="label", out_path=str(tmp_path), config=FAST)
    assert adata.uns["scNym_train_results"]["val_idx"] == labeled[:15].tolist()


@pytest.mark.parametrize("preset", sorted(CONFIGS))
def test_every_preset_trains(tmp_path, preset):
    adata = make_counts(n_cells=160, n_genes=30, seed=7)
    config = {**FAST, "preset": preset, "n_epochs": 2}
    scnym_api(adata, task="train", groupby="label", out_path=str(tmp_path), config=config)
    log = pd.read_csv(tmp_path / "training_log.csv")
    assert len(log) == 2
    if preset == "no_ssl":
        assert (log["unsup_loss"] == 0).all() and (log["dan_loss"] == 0).all()
    else:
        assert (log["unsup_weight"] > 0).any() or log["epoch"].max() == 1


def test_original_style_dict_config_with_run_keys(tmp_path):
    adata = make_counts(n_cells=160, n_genes=30, seed=8)
    config = {**FAST, "groupby": "label", "out_path": str(tmp_path)}
    scnym_train(adata, config)
    assert (tmp_path / WEIGHTS_FILE).is_file()
    scnym_predict(adata, {"trained_model": str(tmp_path), "key_added": "pred"})
    assert "pred" in adata.obs and "pred_confidence" in adata.obs


@pytest.mark.slow
def test_semi_supervised_adversarial_beats_supervised_on_domain_shift(tmp_path):
    """MixMatch + domain adversary recover accuracy lost to a batch effect."""
    config = {
        "n_epochs": 30,
        "batch_size": 64,
        "ssl_kwargs": {"min_epochs": 5, "ramp_epochs": 10, "dan_ramp_epochs": 10},
    }
    accuracy = {"no_ssl": [], "no_new_identity": []}
    for seed in (0, 1):
        for preset in accuracy:
            adata = make_counts(
                n_cells=800, n_genes=100, n_classes=4, seed=seed, unlabeled_fraction=0.5,
                shift=1.5, marker_fold=2.0, depth=1000,
            )  # fmt: skip
            out = tmp_path / f"{preset}_{seed}"
            run = {**config, "preset": preset, "seed": seed}
            scnym_api(adata, task="train", groupby="label", out_path=str(out), config=run)
            scnym_api(adata, task="predict", trained_model=str(out))
            accuracy[preset].append(_target_accuracy(adata))
    gain = np.array(accuracy["no_new_identity"]) - np.array(accuracy["no_ssl"])
    assert gain.min() > 0.03, accuracy
    assert gain.mean() > 0.06, accuracy


# ----------------------------------------------------------------------------
# Errors a user sees
# ----------------------------------------------------------------------------


def test_bad_task_raises():
    with pytest.raises(ValueError, match="task must be one of"):
        scnym_api(make_counts(n_cells=40), task="fit")


def test_missing_groupby_column_raises():
    with pytest.raises(ValueError, match="not a column of adata.obs"):
        scnym_api(make_counts(n_cells=40), task="train", groupby="nope")


def test_duplicate_genes_raise():
    adata = make_counts(n_cells=40, n_genes=10)
    adata.var_names = ["g"] * 2 + [f"g{i}" for i in range(8)]
    with pytest.raises(ValueError, match="var_names_make_unique"):
        scnym_api(adata, task="train", groupby="label")


def test_scaled_data_raises():
    adata = log1p_cpm(make_counts(n_cells=40, n_genes=10))
    adata.X = adata.X - adata.X.mean(axis=0)
    with pytest.raises(ValueError, match="negative values"):
        scnym_api(adata, task="train", groupby="label")


def test_nan_raises():
    adata = log1p_cpm(make_counts(n_cells=40, n_genes=10))
    adata.X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        scnym_api(adata, task="train", groupby="label")


def test_too_few_labeled_cells_raise(tmp_path):
    adata = make_counts(n_cells=60, n_genes=10, unlabeled_fraction=0.9)
    with pytest.raises(ValueError, match="Too few labeled cells.*Label more cells"):
        scnym_api(adata, task="train", groupby="label", out_path=str(tmp_path))


def test_missing_labels_raise(tmp_path):
    adata = make_counts(n_cells=60, n_genes=10)
    adata.obs["label"] = adata.obs["label"].where(np.arange(60) > 0)
    with pytest.raises(ValueError, match="missing labels.*'Unlabeled'"):
        scnym_api(adata, task="train", groupby="label", out_path=str(tmp_path))


def test_predict_without_model_raises():
    with pytest.raises(ValueError, match="trained_model"):
        scnym_api(make_counts(n_cells=40), task="predict")
    with pytest.raises(FileNotFoundError):
        scnym_api(make_counts(n_cells=40), task="predict", trained_model="/no/such/dir")


def test_predict_with_no_shared_genes_names_the_cause(trained):
    adata, out = trained
    query = adata.copy()
    query.var_names = [f"ENSG{i:011d}" for i in range(query.n_vars)]
    with pytest.raises(ValueError, match="Ensembl"):
        scnym_api(query, task="predict", trained_model=str(out))


def test_list_configs_describes_every_preset():
    descriptions = list_configs()
    assert set(descriptions) == set(CONFIGS)
    assert "no new cell types" in descriptions["no_new_identity"]
