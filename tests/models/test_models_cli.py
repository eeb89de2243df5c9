"""``scnym models list | show | fetch | verify``, ``annotate --model NAME``, and no torch import."""

from __future__ import annotations

import json

import anndata
import numpy as np
from click.testing import CliRunner
from scnym.cli import main
from scnym.infer import OnnxModel, annotate
from synthetic import make_counts
from torchless import run_cli_without_torch


def _run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_models_list_shows_every_entry_and_where_its_file_is(local_registry):
    result = _run("models", "list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["name", "kind", "species", "genes", "classes", "file", "aliases"]
    model, atlas = local_registry.get("test_model"), local_registry.get("test_atlas")
    assert lines[1].split() == ["test_model", "model", "human", str(model.n_genes),
                                str(len(model.classes)), "local", "pretrained_human"]  # fmt: skip
    assert lines[2].split() == ["test_atlas", "atlas", "human", str(atlas.n_genes),
                                str(len(atlas.classes)), "local", "atlas_human"]  # fmt: skip
    assert lines[3] == f"Registry: {local_registry.path}"


def test_models_list_of_an_empty_registry(registry_path):
    result = _run("models", "list")
    assert result.exit_code == 0 and f"No entries in {registry_path}" in result.output


def test_models_show_as_text_and_json(local_registry):
    entry = local_registry.get("test_atlas")
    result = _run("models", "show", "atlas_human", "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown == {
        **entry.to_dict(),
        "path": str(local_registry.root / entry.file),
        "status": "local",
    }
    result = _run("models", "show", "test_atlas")
    assert result.exit_code == 0, result.output
    assert f"sha256:         {entry.sha256}" in result.output
    assert f"classes:        ({len(entry.classes)}) {', '.join(entry.classes)}" in result.output
    assert f"make_counts seed 21, {entry.trained_on.n_cells} cells" in result.output


def test_models_fetch_prints_the_path_and_verify_checks_it(local_registry):
    path = local_registry.root / "test_model.onnx"
    result = _run("models", "fetch", "pretrained_human", "--quiet")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(path)
    result = _run("models", "verify", "test_model")
    assert result.exit_code == 0 and result.output.startswith("ok test_model")
    path.write_bytes(path.read_bytes()[:-1])
    result = _run("models", "verify", "test_model")
    assert result.exit_code == 1
    assert result.output.startswith("MISMATCH test_model")
    assert local_registry.get("test_model").sha256 in result.output


def test_models_errors_are_one_line(local_registry):
    result = _run("models", "show", "no_such_model")
    assert result.exit_code == 1
    assert result.output.startswith("Error: No 'no_such_model' in the registry")
    assert len(result.output.strip().splitlines()) == 1


def test_annotate_accepts_a_registry_model_name(local_registry, tmp_path):
    query = make_counts(n_cells=80, n_genes=60, seed=7)
    store = tmp_path / "q.h5ad"
    query.write_h5ad(store)
    result = _run("annotate", str(store), "--model", "pretrained_human", "--quiet",
                  "--output", str(tmp_path / "by_name.csv"))  # fmt: skip
    assert result.exit_code == 0, result.output
    expected = annotate(store, local_registry.root / "test_model.onnx",
                        output=tmp_path / "by_path.csv", progress=False)  # fmt: skip
    by_name = (tmp_path / "by_name.csv").read_text()
    assert by_name == (tmp_path / "by_path.csv").read_text()
    assert expected.n_cells == 80
    result = _run("annotate", str(store), "--model", "no_such_model")
    assert result.exit_code == 1
    assert "not a registry model (registry models: test_model)" in result.output


def test_the_registry_and_its_commands_need_no_torch(local_registry):
    for args in (["models", "list"], ["models", "fetch", "pretrained_human", "--quiet"]):
        done = run_cli_without_torch(*args)
        assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(local_registry.root / "test_model.onnx")


def test_registry_model_output_matches_the_onnx_model(local_registry, tmp_path):
    """`annotate --model NAME` runs exactly the registry's file."""
    query = make_counts(n_cells=40, n_genes=60, seed=8)
    store = tmp_path / "q.h5ad"
    query.write_h5ad(store)
    assert _run("annotate", str(store), "--model", "test_model", "--quiet").exit_code == 0
    model = OnnxModel(local_registry.root / "test_model.onnx")
    X = query.X.toarray()
    expected = model.run(X, total_counts=X.sum(axis=1))
    written = anndata.read_h5ad(store)
    np.testing.assert_array_equal(
        written.obs["scNym"].astype(str).to_numpy(),
        np.asarray(model.classes)[expected.predicted_class],
    )
    np.testing.assert_allclose(written.obsm["X_scnym"], expected.embedding, atol=1e-6)
