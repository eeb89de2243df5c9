"""The ``scnym train | predict | configs`` commands."""

from __future__ import annotations

import json
import re

import anndata
from click.testing import CliRunner
from scnym.cli import main
from synthetic import make_counts


def test_train_then_predict(tmp_path):
    data = tmp_path / "data.h5ad"
    make_counts(n_cells=160, n_genes=30, seed=1).write_h5ad(data)
    runner = CliRunner()
    result = runner.invoke(
        main,
        ["train", str(data), "--groupby", "label", "--out", str(tmp_path / "m"),
         "--epochs", "2", "--seed", "3", "--config", "no_new_identity", "--threads", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "held-out accuracy" in result.output
    manifest = json.loads((tmp_path / "m" / "scnym_model.json").read_text())
    assert manifest["config"]["n_epochs"] == 2 and manifest["config"]["seed"] == 3
    result = runner.invoke(
        main,
        ["predict", str(data), "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o.h5ad")],
    )
    assert result.exit_code == 0, result.output
    annotated = anndata.read_h5ad(tmp_path / "o.h5ad")
    assert {"scNym", "scNym_confidence"} <= set(annotated.obs.columns)
    assert annotated.obsm["X_scnym"].shape == (160, 256)


def test_train_accepts_a_json_config(tmp_path):
    data = tmp_path / "data.h5ad"
    make_counts(n_cells=160, n_genes=30, seed=1).write_h5ad(data)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"preset": "no_ssl", "n_epochs": 1, "batch_size": 32}))
    result = CliRunner().invoke(
        main, ["train", str(data), "--groupby", "label", "--out", str(tmp_path / "m"),
               "--config", str(config)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "m" / "scnym_model.json").read_text())
    assert manifest["config"]["batch_size"] == 32 and manifest["config"]["unsup_max_weight"] == 0


def test_train_gene_selection_options(tmp_path):
    data = tmp_path / "data.h5ad"
    make_counts(n_cells=160, n_genes=30, seed=1).write_h5ad(data)
    runner = CliRunner()
    base = ["train", str(data), "--groupby", "label", "--epochs", "1"]
    result = runner.invoke(
        main,
        [
            *base,
            "--out",
            str(tmp_path / "m"),
            "--gene-selection",
            "variance",
            "--n-top-genes",
            "12",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "12 genes" in result.output
    result = runner.invoke(main, [*base, "--out", str(tmp_path / "n"), "--n-top-genes", "12"])
    assert result.exit_code == 1
    assert "set gene_selection='variance' as well" in result.output


def test_train_reports_a_missing_label_column(tmp_path):
    data = tmp_path / "data.h5ad"
    make_counts(n_cells=40, n_genes=10).write_h5ad(data)
    result = CliRunner().invoke(main, ["train", str(data), "--groupby", "nope"])
    assert result.exit_code == 1
    assert "Error: groupby='nope' is not a column of adata.obs" in result.output


def test_configs_lists_and_shows_presets():
    runner = CliRunner()
    listing = runner.invoke(main, ["configs"])
    assert listing.exit_code == 0 and "new_identity_discovery" in listing.output
    shown = runner.invoke(main, ["configs", "--show", "new_identity_discovery"])
    values = json.loads(shown.output)
    assert values["ssl_kwargs"]["pseudolabel_min_confidence"] == 0.9


def test_predict_command_takes_a_registry_model(tmp_path):
    from scnym.datasets import kang_pbmc_small

    data = tmp_path / "cells.h5ad"
    kang_pbmc_small()[:200].copy().write_h5ad(data)
    out = tmp_path / "annotated.h5ad"
    result = CliRunner().invoke(main, ["predict", str(data), "--model", "pretrained_human",
                                       "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    written = anndata.read_h5ad(out)
    assert written.obs["scNym"].notna().all()
    flagged = int(written.obs["scNym_unknown"].sum())  # the shipped model has the novelty score
    assert written.obs["scNym_novelty"].notna().all()
    assert f"Flagged as unlike the reference: {flagged:,} cells ({flagged / 200:.1%})" in (
        result.output
    )
    missing = CliRunner().invoke(main, ["predict", str(data), "--model", str(tmp_path / "nope")])
    assert missing.exit_code != 0 and "scnym models list" in missing.output


def test_predict_with_an_onnx_file_or_registry_name_needs_no_torch(local_registry, tmp_path):
    from torchless import run_cli_without_torch

    data = tmp_path / "cells.h5ad"
    make_counts(n_cells=80, n_genes=60, n_classes=3, seed=11).write_h5ad(data)
    model_file = local_registry.path.parent / "test_model.onnx"
    for model in (str(model_file), "test_model"):
        out = tmp_path / f"{model.replace('/', '_')}.h5ad"
        done = run_cli_without_torch("predict", str(data), "--model", model, "--out", str(out))
        assert done.returncode == 0, done.stderr
        annotated = anndata.read_h5ad(out)
        assert {"scNym", "scNym_confidence"} <= set(annotated.obs.columns)
        assert annotated.obsm["X_scnym"].shape[0] == 80


def test_predict_never_replaces_its_input_and_an_output_only_with_overwrite(
    local_registry, tmp_path
):
    data = tmp_path / "cells.h5ad"
    make_counts(n_cells=50, n_genes=60, n_classes=3, seed=11).write_h5ad(data)
    before = data.read_bytes()
    args = ["predict", str(data), "--model", "test_model"]
    refused = CliRunner().invoke(main, [*args, "-o", str(data), "--overwrite"])
    assert refused.exit_code == 1 and "is the input store" in refused.output
    assert data.read_bytes() == before
    assert CliRunner().invoke(main, args).exit_code == 0  # cells_scnym.h5ad
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and "exists: pass --overwrite" in again.output
    assert CliRunner().invoke(main, [*args, "--overwrite"]).exit_code == 0
    assert data.read_bytes() == before


def test_the_unlabeled_marker_in_any_case_and_its_near_misses(tmp_path):
    from scnym.labels import label_codes

    adata = make_counts(n_cells=120, n_genes=30, seed=3)
    adata.obs["label"] = adata.obs["label"].str.replace("Unlabeled", "unlabeled")
    codes, unlabeled, classes = label_codes(adata, "label")
    assert unlabeled.sum() == (adata.obs["label"] == "unlabeled").sum() > 0
    assert "unlabeled" not in classes and (codes[unlabeled] == -1).all()
    adata.obs["label"] = adata.obs["label"].str.replace("unlabeled", "unlabelled")
    data = tmp_path / "cells.h5ad"
    adata.write_h5ad(data)
    result = CliRunner().invoke(main, ["train", str(data), "--groupby", "label", "--epochs", "1"])
    assert result.exit_code == 1
    assert "holds ['unlabelled'], which would be learned as a cell type" in result.output


def test_every_verb_speaks_one_option_vocabulary():
    def options(verb: str) -> str:
        result = CliRunner().invoke(main, [*verb.split(), "--help"])
        assert result.exit_code == 0, result.output
        return result.output

    for verb in ("train", "predict", "export", "annotate", "demo"):
        assert "-o, --output" in options(verb), verb
    for verb in ("train", "predict", "annotate"):
        assert "--threads" in options(verb) and "--device" in options(verb), verb
    for verb in ("predict", "annotate"):
        text = options(verb)
        for option in ("--layer", "--gene-key", "--key-added", "--min-gene-overlap",
                       "--overwrite"):  # fmt: skip
            assert option in text, (verb, option)
        assert "[default: auto]" in text.split("--device")[1].split("--")[0], verb


def test_configs_names_the_default_and_inspect_rounds_its_figures(onnx_model):
    shown = CliRunner().invoke(main, ["configs"]).output
    assert "new_identity_discovery" in shown and "(the default of train, the API" in shown
    inspected = CliRunner().invoke(main, ["inspect", str(onnx_model)]).output
    metrics = next(line for line in inspected.splitlines() if line.startswith("Metrics:"))
    decimals = re.findall(r"\d\.(\d+)", metrics)
    assert decimals and max(len(d) for d in decimals) <= 7  # 4 significant digits, not 16


def test_train_says_how_it_stopped_and_predict_on_cuda_names_onnxruntime(tmp_path, onnx_model):
    data = tmp_path / "cells.h5ad"
    make_counts(n_cells=200, n_genes=30, seed=2).write_h5ad(data)
    result = CliRunner().invoke(main, ["train", str(data), "--groupby", "label", "--epochs", "3",
                                       "-o", str(tmp_path / "m")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Trained all 3 epochs; the weights of epoch" in result.output
    cuda = CliRunner().invoke(main, ["predict", str(data), "--model", str(onnx_model),
                                     "--device", "cuda", "-o", str(tmp_path / "p.h5ad")])  # fmt: skip
    assert cuda.exit_code == 1 and "onnxruntime's CUDA provider" in cuda.output
    assert "torch" not in cuda.output


def test_predict_writes_h5ad_only(tmp_path, onnx_model):
    data = tmp_path / "cells.h5ad"
    make_counts(n_cells=50, n_genes=60, seed=2).write_h5ad(data)
    result = CliRunner().invoke(main, ["predict", str(data), "--model", str(onnx_model),
                                       "-o", str(tmp_path / "p.csv")])  # fmt: skip
    assert result.exit_code == 2 and "predict writes an annotated .h5ad" in result.output
    assert not (tmp_path / "p.csv").exists()
