"""The explain workflow: genes ranked per group by saliency, guided backprop and integrated gradients."""

from __future__ import annotations

import logging

import anndata
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from scipy import sparse
from scnym.api import scnym_api
from scnym.cli import main
from scnym.commands import EXPLAIN_METHODS
from scnym.explain import METHODS, TABLE_COLUMNS, group_labels, sample_groups
from scnym.export import export_model
from scnym.infer.contract import DEFAULT_EXPLAIN_KEY
from scnym.infer.memory import model_inputs
from scnym.infer.preprocessing import align_genes, to_log1p_cpm
from scnym.interpret import rank_genes
from scnym.modeldir import load_model_dir
from scnym.onnx_attribution import OnnxAttribution, log_odds

N_GENES = 30
CLASSES = ["alpha", "beta", "gamma"]
#: The one gene that defines each class (all other genes share one profile).
DEFINING = {"alpha": "g03", "beta": "g11", "gamma": "g24"}


def _single_gene_classes(n_cells: int = 240, seed: int = 0) -> anndata.AnnData:
    """Raw counts where each class differs from the others by one gene only, 30x higher."""
    genes = [f"g{i:02d}" for i in range(N_GENES)]
    labels = np.array(CLASSES)[np.arange(n_cells) % len(CLASSES)]
    profile = np.random.default_rng(0).gamma(4.0, 5.0, size=N_GENES)  # the same for every seed
    rates = np.tile(profile, (n_cells, 1))
    rng = np.random.default_rng(seed)
    for name, gene in DEFINING.items():
        rates[labels == name, genes.index(gene)] *= 30.0
    counts = rng.poisson(rates * rng.lognormal(0, 0.2, size=(n_cells, 1))).astype(np.float32)
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(labels)}, index=[f"c{i}" for i in range(n_cells)]
    )
    return anndata.AnnData(sparse.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=genes))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(data, model directory, its ONNX export) for the single-gene classes."""
    root = tmp_path_factory.mktemp("explain")
    torch.manual_seed(0)
    adata = _single_gene_classes()
    config = {"preset": "no_new_identity", "n_epochs": 15, "batch_size": 64, "seed": 0,
              "gene_selection": "all", "ssl_kwargs": {"min_epochs": 0}}  # fmt: skip
    scnym_api(adata, task="train", groupby="cell_type", out_path=str(root / "model"), config=config)
    export_model(root / "model", root / "model.onnx")
    return _single_gene_classes(seed=1), root / "model", root / "model.onnx"


def _top_genes(table: pd.DataFrame) -> dict[str, str]:
    return table[table["rank"] == 1].set_index("group")["gene"].to_dict()


@pytest.mark.parametrize("method", METHODS)
def test_the_defining_gene_ranks_first_with_each_method(trained, method):
    adata, model_dir, _ = trained
    table = rank_genes(adata, model_dir, "cell_type", method=method, n_genes=5, progress=False)
    assert _top_genes(table) == DEFINING
    params = adata.uns[DEFAULT_EXPLAIN_KEY]["params"]
    assert params["method"] == f"scnym_{method}"
    assert params["groups"] == params["targets"] == CLASSES


def test_onnx_saliency_by_finite_differences_ranks_the_defining_gene_first(trained):
    adata, _, onnx_path = trained
    table = rank_genes(adata, str(onnx_path), "cell_type", n_genes=5, progress=False)
    assert _top_genes(table) == DEFINING
    assert adata.uns[DEFAULT_EXPLAIN_KEY]["params"]["output"] == "log_odds"


def test_finite_differences_match_the_gradient_of_the_log_odds(trained):
    adata, model_dir, onnx_path = trained
    from scnym.infer.model import OnnxModel

    bundle = load_model_dir(model_dir)
    X = model_inputs(adata, bundle.gene_names)[0][:5].toarray()
    numeric, _ = OnnxAttribution(OnnxModel(onnx_path)).attribute(X, 1, "saliency")
    x = torch.from_numpy(X).requires_grad_(True)
    logits = bundle.model(x) / bundle.temperature  # the exported probabilities are calibrated
    others = torch.cat([logits[:, :1], logits[:, 2:]], dim=1)
    (logits[:, 1] - torch.logsumexp(others, dim=1)).sum().backward()
    # Central differences straddle a ReLU's kink now and then: close per cell, closer on average.
    np.testing.assert_allclose(numeric, x.grad.numpy(), rtol=0.05, atol=0.01)
    # errors scale with the gradient, which the temperature scales by 1 / T
    atol = 1e-3 / min(bundle.temperature, 1.0)
    np.testing.assert_allclose(numeric.mean(0), x.grad.numpy().mean(0), rtol=0.01, atol=atol)
    probs = torch.softmax(logits, 1).detach().numpy()
    expected = (logits[:, 1] - torch.logsumexp(others, dim=1)).detach().numpy()
    np.testing.assert_allclose(log_odds(probs, 1), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["guided", "integrated_gradients"])
def test_onnx_model_refuses_methods_that_need_torch(trained, method, tmp_path):
    adata, _, onnx_path = trained
    with pytest.raises(NotImplementedError, match="torch weights.*model directory"):
        rank_genes(adata, str(onnx_path), "cell_type", method=method, progress=False)
    data = tmp_path / "cells.h5ad"
    adata.write_h5ad(data)
    result = CliRunner().invoke(
        main, ["explain", str(data), "--model", str(onnx_path), "--groupby", "cell_type",
               "--method", method],
    )  # fmt: skip
    assert result.exit_code != 0 and "needs the model's torch weights" in result.output


def test_registry_model_explained_by_name(local_registry):
    from synthetic import make_counts

    adata = make_counts(n_cells=90, n_genes=60, n_classes=3, seed=11)
    table = rank_genes(adata, "pretrained_human", "cell_type", n_genes=3, cells_per_group=10,
                       progress=False)  # fmt: skip
    assert list(table.columns) == TABLE_COLUMNS
    assert set(table["group"]) == {"type_0", "type_1", "type_2"}


def test_scanpy_reads_the_result(trained, tmp_path):
    sc = pytest.importorskip("scanpy")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    adata, model_dir, _ = trained
    adata = adata.copy()
    # Dense: scanpy 1.11's default dendrogram fails on sparse X of < 50 genes, its own results too.
    adata.X = adata.X.toarray()
    table = rank_genes(adata, model_dir, "cell_type", n_genes=8, key_added="why", progress=False)
    frame = sc.get.rank_genes_groups_df(adata, group=None, key="why")
    assert len(frame) == 3 * 8 and {"names", "scores", "logfoldchanges"} <= set(frame.columns)
    merged = frame.merge(table, left_on=["group", "names"], right_on=["group", "gene"])
    assert len(merged) == len(table)
    np.testing.assert_allclose(merged["scores"], merged["score"])
    top = frame[frame["names"].isin(DEFINING.values())]
    assert (top["logfoldchanges"] > 3).all()  # 30x higher in its class
    sc.pl.rank_genes_groups(adata, key="why", show=False)
    sc.pl.rank_genes_groups_dotplot(adata, key="why", n_genes=3, show=False)
    plt.close("all")
    adata.write_h5ad(tmp_path / "explained.h5ad")
    back = anndata.read_h5ad(tmp_path / "explained.h5ad")
    pd.testing.assert_frame_equal(sc.get.rank_genes_groups_df(back, group=None, key="why"), frame)


def test_cli_writes_ranked_csv_h5ad_and_dotplot(trained, tmp_path):
    adata, model_dir, _ = trained
    data = tmp_path / "cells.h5ad"
    adata.write_h5ad(data)
    out = tmp_path / "ranked.csv"
    result = CliRunner().invoke(
        main, ["explain", str(data), "--model", str(model_dir), "--groupby", "cell_type",
               "--n-genes", "7", "--cells-per-group", "20", "-o", str(out),
               "--out-h5ad", str(tmp_path / "out.h5ad"), "--dotplot", str(tmp_path / "dots.png")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "alpha: g03" in result.output
    table = pd.read_csv(out)
    assert list(table.columns) == TABLE_COLUMNS == ["group", "rank", "gene", "score"]
    for _, group in table.groupby("group"):
        assert group["rank"].tolist() == list(range(1, 8))
        assert (np.diff(group["score"]) <= 0).all()
    params = anndata.read_h5ad(tmp_path / "out.h5ad").uns[DEFAULT_EXPLAIN_KEY]["params"]
    assert list(params["groups"]) == CLASSES and list(params["n_cells"]) == [20, 20, 20]
    assert (tmp_path / "dots.png").stat().st_size > 5000
    again = CliRunner().invoke(
        main,
        ["explain", str(data), "--model", str(model_dir), "--groupby", "cell_type", "-o", str(out)],
    )
    assert again.exit_code != 0 and "--overwrite" in again.output


def test_cli_method_choices_are_the_methods():
    assert EXPLAIN_METHODS == METHODS


def test_groups_that_are_not_classes_are_explained_toward_their_majority_class(trained):
    adata, model_dir, _ = trained
    adata = adata.copy()
    clusters = {"alpha": "0", "beta": "1", "gamma": "2"}
    adata.obs["leiden"] = adata.obs["cell_type"].map(clusters).astype(str)
    table = rank_genes(adata, model_dir, "leiden", n_genes=3, progress=False)
    params = adata.uns[DEFAULT_EXPLAIN_KEY]["params"]
    assert params["groups"] == ["0", "1", "2"] and params["targets"] == CLASSES
    assert _top_genes(table) == {clusters[c]: g for c, g in DEFINING.items()}


def test_group_names_with_slashes_write_to_h5ad(trained, tmp_path):
    adata, model_dir, _ = trained
    adata = adata.copy()
    adata.obs["label"] = adata.obs["cell_type"].astype(str).str.replace("a", "a/b")
    rank_genes(adata, model_dir, "label", n_genes=3, progress=False)
    adata.write_h5ad(tmp_path / "slashes.h5ad")
    back = anndata.read_h5ad(tmp_path / "slashes.h5ad").uns[DEFAULT_EXPLAIN_KEY]
    assert list(back["names"].dtype.names) == ["a/blpha/b", "beta/b", "ga/bmma/b"]


def test_groupby_scnym_is_predicted_when_absent(trained):
    adata, model_dir, _ = trained
    adata = adata.copy()
    rank_genes(adata, model_dir, "scNym", n_genes=3, progress=False)
    assert np.mean(adata.obs["scNym"].astype(str) == adata.obs["cell_type"].astype(str)) > 0.9


def test_bad_input_gives_clear_errors(trained, tmp_path):
    adata, model_dir, _ = trained
    with pytest.raises(ValueError, match="no column 'clusters'.*cell_type"):
        rank_genes(adata, model_dir, "clusters", progress=False)
    with pytest.raises(ValueError, match="method must be one of"):
        rank_genes(adata, model_dir, "cell_type", method="shap", progress=False)
    with pytest.raises(ValueError, match="no layer 'counts'"):
        rank_genes(adata, model_dir, "cell_type", layer="counts", progress=False)
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        rank_genes(adata, str(tmp_path / "nothing"), "cell_type", progress=False)
    renamed = adata.copy()
    renamed.var_names = [f"ENSG{i:011d}" for i in range(N_GENES)]
    with pytest.raises(ValueError, match="Only 0 of the model's 30 genes"):
        rank_genes(renamed, model_dir, "cell_type", progress=False)
    with pytest.raises(ValueError, match=r"Only 10 of the model's 30 genes \(33.3%\)"):
        rank_genes(adata[:, :10].copy(), model_dir, "cell_type", progress=False)
    data = tmp_path / "cells.h5ad"
    adata.write_h5ad(data)
    result = CliRunner().invoke(
        main, ["explain", str(data), "--model", str(model_dir), "--groupby", "clusters"]
    )
    assert result.exit_code != 0 and "no column 'clusters'" in result.output


def test_integrated_gradients_checks_completeness(trained, caplog):
    adata, model_dir, _ = trained
    with caplog.at_level(logging.WARNING, logger="scnym"):
        rank_genes(adata, model_dir, "cell_type", method="integrated_gradients", n_steps=300,
                   cells_per_group=10, progress=False)  # fmt: skip
    assert adata.uns[DEFAULT_EXPLAIN_KEY]["params"]["n_incomplete"] == 0 and not caplog.records
    with caplog.at_level(logging.WARNING, logger="scnym"):
        rank_genes(adata, model_dir, "cell_type", method="integrated_gradients", n_steps=1,
                   cells_per_group=10, progress=False)  # fmt: skip
    params = adata.uns[DEFAULT_EXPLAIN_KEY]["params"]
    assert params["n_incomplete"] > 0 and params["completeness_tolerance"] == "0.01 + 5%"
    assert any("increase the number of steps" in r.getMessage() for r in caplog.records)


def test_model_inputs_is_prediction_input(trained):
    adata, model_dir, _ = trained
    genes = list(reversed(load_model_dir(model_dir).gene_names))[:20] + ["absent"]
    X, found = model_inputs(adata, genes, min_gene_overlap=0.9)
    expected = align_genes(to_log1p_cpm(adata.X)[0], adata.var_names, genes)
    np.testing.assert_allclose(X.toarray(), expected.toarray())
    assert found.tolist() == [True] * 20 + [False]
    counts = adata.X.toarray()  # the library size is taken over all genes, not the model's
    gene = genes[0]
    column = list(adata.var_names).index(gene)
    np.testing.assert_allclose(
        X.toarray()[:, 0], np.log1p(counts[:, column] / counts.sum(1) * 1e6), rtol=1e-5
    )
    logged = adata.copy()
    logged.X = to_log1p_cpm(adata.X)[0]
    np.testing.assert_allclose(model_inputs(logged, genes)[0].toarray(), X.toarray(), rtol=1e-6)
    logged.raw, logged.layers["counts"] = adata, adata.X  # other layers, the same input
    np.testing.assert_allclose(model_inputs(logged, genes, "counts")[0].toarray(), X.toarray())
    np.testing.assert_allclose(model_inputs(logged, genes, "raw")[0].toarray(), X.toarray())


def test_missing_genes_are_not_ranked(trained):
    adata, model_dir, _ = trained
    partial = adata[:, [g for g in adata.var_names if g != "g11"]].copy()
    table = rank_genes(partial, model_dir, "cell_type", n_genes=N_GENES, progress=False)
    assert "g11" not in set(table["gene"])
    assert table.groupby("group").size().tolist() == [N_GENES - 1] * 3


def test_sampling_is_seeded_and_capped():
    obs = pd.DataFrame(
        {"g": ["a"] * 50 + ["b"] * 5 + [None] * 3}, index=[f"c{i}" for i in range(58)]
    )
    labels = group_labels(anndata.AnnData(obs=obs), "g")
    first, again = sample_groups(labels, 10, seed=3), sample_groups(labels, 10, seed=3)
    assert {k: len(v) for k, v in first.items()} == {"a": 10, "b": 5}
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first["a"], sample_groups(labels, 10, seed=4)["a"])
    assert set(first["a"]) <= set(range(50)) and set(first["b"]) == set(range(50, 55))
