"""The bundled demo, end to end on a reduced setting: train, export, annotate, report."""

from __future__ import annotations

import json

import anndata
import pandas as pd
import pytest
from click.testing import CliRunner
from scnym.cli import main


@pytest.mark.slow
def test_demo_command_writes_a_complete_report(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--out", str(out), "--epochs", "2"])
    assert result.exit_code == 0, result.output
    assert "balanced accuracy" in result.output and "cells/s" in result.output
    for name in (
        "training_curves.png",
        "confusion_matrix.png",
        "embedding.png",
        "saliency_dotplot.png",
    ):
        assert (out / "report" / name).stat().st_size > 5000, name  # a drawn figure
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["n_query_cells"] == 1000
    assert summary["gene_fraction"] == 1.0
    assert summary["agreement_with_torch"] >= 0.99
    assert 0.2 < summary["accuracy"] <= 1.0  # 2 epochs: better than chance, not a target
    # The store was annotated in place, and holds no labels.
    store = anndata.read_zarr(out / "stim.zarr")
    assert {"scNym", "scNym_confidence"} <= set(store.obs.columns)
    assert "cell_type" not in store.obs.columns
    assert store.obsm["X_scnym"].shape == (1000, 256)
    assert set(store.obs["scNym"].astype(str)) <= set(summary["recall"])
    ranked = pd.read_csv(out / "report" / "saliency_genes.csv")
    assert list(ranked.columns) == ["group", "rank", "gene", "score"]
    assert set(ranked["group"]) <= set(summary["recall"]) and ranked["rank"].max() == 20
