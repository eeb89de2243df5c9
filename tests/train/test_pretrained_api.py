"""The API with registry models and atlases: get_pretrained_weights, predict, atlas2target."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
import scnym.api as api
from scipy import sparse
from scnym.api import atlas2target, get_pretrained_weights, scnym_api
from scnym.infer import OnnxModel
from scnym.models import RegistryError
from synthetic import log1p_cpm, make_counts

PREDICT_KEYS = ("scNym", "scNym_confidence")


def _query(n_cells: int = 90) -> anndata.AnnData:
    """Raw counts of 50 of the model's 60 genes (shuffled) and 20 genes it does not know."""
    adata = make_counts(n_cells=n_cells, n_genes=80, seed=31)
    order = np.random.default_rng(1).permutation(np.arange(10, 80))
    return adata[:, order].copy()


def _expected(adata: anndata.AnnData, model_path):
    """The ONNX model run directly on the counts, aligned by gene name."""
    model = OnnxModel(model_path)
    X = sparse.csr_matrix(adata.X).toarray()
    total = X.sum(axis=1)
    index = pd.Index(adata.var_names).get_indexer(model.genes)
    dense = np.zeros((adata.n_obs, len(model.genes)), dtype=np.float32)
    dense[:, index >= 0] = X[:, index[index >= 0]]
    return model.run(dense, total_counts=total), model.classes


def _check_prediction(adata, model_path, counts):
    expected, classes = _expected(counts, model_path)
    assert isinstance(adata.obs["scNym"].dtype, pd.CategoricalDtype)
    predicted = np.asarray(classes)[expected.predicted_class]
    # the categories are the model's classes that some cell received, in the model's order
    # (scanpy's dotplot fails on a category without cells: issue 17)
    assert list(adata.obs["scNym"].cat.categories) == [c for c in classes if c in set(predicted)]
    np.testing.assert_array_equal(adata.obs["scNym"].astype(str).to_numpy(), predicted)
    assert adata.obs["scNym_confidence"].dtype == np.float32
    np.testing.assert_allclose(
        adata.obs["scNym_confidence"], expected.probabilities.max(1), atol=1e-5
    )
    probabilities = adata.uns["scNym_probabilities"]
    assert list(probabilities.columns) == classes
    assert probabilities.index.equals(adata.obs_names)
    np.testing.assert_allclose(probabilities.to_numpy(), expected.probabilities, atol=1e-5)
    assert adata.obsm["X_scnym"].dtype == np.float32
    np.testing.assert_allclose(adata.obsm["X_scnym"], expected.embedding, atol=1e-4)


@pytest.fixture()
def no_torch_model(monkeypatch):
    """Fail if the torch model directory path is taken."""

    def refuse(*args, **kwargs):
        raise AssertionError("the torch path was used")

    monkeypatch.setattr(api, "load_model_dir", refuse)


def test_get_pretrained_weights_returns_the_verified_onnx_file(local_registry):
    expected = local_registry.root / local_registry.get("test_model").file
    assert get_pretrained_weights("pretrained_human") == str(expected)
    assert get_pretrained_weights("test_model", out_path="ignored") == str(expected)
    with pytest.raises(RegistryError, match="available: test_model"):
        get_pretrained_weights("pretrained_mouse")
    with pytest.raises(RegistryError, match="No model 'atlas_human'"):
        get_pretrained_weights("atlas_human")


@pytest.mark.parametrize("form", ["sparse_counts", "dense_counts", "dense_log1p", "sparse_log1p"])
def test_predict_with_a_registry_model_matches_the_onnx_model(local_registry, no_torch_model, form):
    counts = _query()
    adata = counts.copy() if "counts" in form else log1p_cpm(counts)
    if form == "dense_counts":
        adata.X = adata.X.toarray()
    if form == "sparse_log1p":
        adata.X = sparse.csr_matrix(adata.X)
    scnym_api(adata, task="predict", trained_model="pretrained_human")
    _check_prediction(adata, local_registry.root / "test_model.onnx", counts)


def test_predict_by_registry_name_or_onnx_path_with_copy_and_key_added(
    local_registry, no_torch_model
):
    counts = _query(n_cells=40)
    path = get_pretrained_weights("pretrained_human")
    for trained_model in ("test_model", path):
        out = scnym_api(counts, task="predict", trained_model=trained_model, copy=True,
                        key_added="pred")  # fmt: skip
        assert "pred" in out.obs and "pred" not in counts.obs
        renamed = out.copy()
        renamed.obs = renamed.obs.rename(
            columns={"pred": "scNym", "pred_confidence": "scNym_confidence"}
        )
        _check_prediction(renamed, path, counts)


def test_predict_with_too_few_shared_genes_is_refused(local_registry):
    adata = make_counts(n_cells=30, n_genes=80, seed=2)[:, 45:].copy()  # 15 of 60 model genes
    with pytest.raises(ValueError, match="Only 15 of 60 model genes"):
        scnym_api(adata, task="predict", trained_model="pretrained_human")


def test_unknown_pretrained_names_and_missing_paths(local_registry):
    with pytest.raises(RegistryError, match="No model 'pretrained_rat'.*test_model"):
        scnym_api(_query(20), task="predict", trained_model="pretrained_rat")
    with pytest.raises(FileNotFoundError):
        scnym_api(_query(20), task="predict", trained_model="no_such_model_dir")


def test_warm_start_from_a_registry_model_is_refused(local_registry):
    adata = make_counts(n_cells=60, n_genes=60, seed=3)
    with pytest.raises(NotImplementedError, match="registry models are ONNX files"):
        scnym_api(adata, task="train", groupby="label", trained_model="pretrained_human",
                  out_path="unused", config={"n_epochs": 1})  # fmt: skip


# ----------------------------------------------------------------------------
# atlas2target
# ----------------------------------------------------------------------------


#: Genes of the registry's test atlas (``local_registry`` in tests/conftest.py).
ATLAS_GENES = 150


def _target(n_genes_shared: int = 120, n_cells: int = 50) -> anndata.AnnData:
    """Raw counts sharing the first ``n_genes_shared`` atlas genes, plus 10 genes of its own."""
    adata = make_counts(n_cells=n_cells, n_genes=ATLAS_GENES + 10, seed=41)
    keep = np.r_[np.arange(n_genes_shared), np.arange(ATLAS_GENES, ATLAS_GENES + 10)]
    adata = adata[:, keep[::-1]].copy()
    adata.obs["sample"] = "s1"
    return adata


def test_atlas2target_joins_atlas_and_target_on_shared_genes(local_registry):
    target = _target()
    before = target.copy()
    atlas = anndata.read_h5ad(local_registry.root / "test_atlas.h5ad")
    assert atlas.n_vars == ATLAS_GENES
    joint = atlas2target(target, species="human")
    shared = atlas.var_names[:120]
    assert joint.shape == (atlas.n_obs + target.n_obs, 120)
    assert list(joint.var_names) == list(shared)
    dataset = joint.obs["scNym_dataset"].astype(str).to_numpy()
    assert (dataset[: atlas.n_obs] == "atlas_reference").all()
    assert (dataset[atlas.n_obs :] == "target").all()
    labels = joint.obs["annotations"].astype(str).to_numpy()
    np.testing.assert_array_equal(labels[: atlas.n_obs], atlas.obs["cell_type"].astype(str))
    assert (labels[atlas.n_obs :] == "Unlabeled").all()
    assert joint.obs_names.is_unique
    assert (joint.obs["sample"].iloc[atlas.n_obs :] == "s1").all()
    # X: atlas values as stored; target counts as log1p(CPM) over all of each cell's genes.
    X = joint.X.toarray() if sparse.issparse(joint.X) else joint.X
    atlas_X = atlas[:, shared].X
    np.testing.assert_allclose(X[: atlas.n_obs], atlas_X, rtol=1e-6)
    expected = log1p_cpm(target)[:, shared].X
    np.testing.assert_allclose(X[atlas.n_obs :], expected, rtol=1e-5, atol=1e-6)
    report = joint.uns["scNym_atlas"]
    assert report["n_shared_genes"] == 120 and report["n_atlas_genes"] == atlas.n_vars
    assert report["sha256"] == local_registry.get("test_atlas").sha256
    # The caller's object is untouched.
    assert list(target.obs.columns) == list(before.obs.columns)
    assert (target.X != before.X).nnz == 0
    assert target.var_names.equals(before.var_names)


def test_atlas2target_by_atlas_name_and_key_added(local_registry):
    joint = atlas2target(_target(), species="test_atlas", key_added="label")
    assert set(joint.obs["label"].astype(str)) == {"type_0", "type_1", "type_2", "Unlabeled"}


def test_atlas2target_warns_on_few_genes_and_fails_on_none(local_registry):
    with pytest.warns(UserWarning, match="Only 40 genes are shared"):
        joint = atlas2target(_target(n_genes_shared=40), species="human")
    assert joint.n_vars == 40
    disjoint = _target()
    disjoint.var_names = [f"ENSG{i:011d}" for i in range(disjoint.n_vars)]
    with pytest.raises(RuntimeError, match="shares no genes"):
        atlas2target(disjoint, species="human")


def test_atlas2target_refuses_duplicate_genes_and_unknown_species(local_registry):
    target = _target()
    target.var_names = ["gene_0"] * 2 + list(target.var_names[2:])
    with pytest.raises(ValueError, match="var_names_make_unique"):
        atlas2target(target, species="human")
    with pytest.raises(RegistryError, match="No atlas 'atlas_rat'.*test_atlas"):
        atlas2target(_target(), species="rat")
