"""The command-line verbs of export without torch: ``scnym inspect`` and ``scnym --help``."""

from __future__ import annotations

from scnym.infer.model import read_metadata
from torchless import run_cli_without_torch


def test_inspect_and_help_run_without_torch(onnx_model):
    classes = read_metadata(onnx_model)["classes"]
    assert len(classes) == 3
    done = run_cli_without_torch("inspect", str(onnx_model))
    assert done.returncode == 0, done.stderr
    assert f"Classes (3): {', '.join(classes)}" in done.stdout
    assert "Genes: 60 symbol" in done.stdout
    shown = run_cli_without_torch("--help")
    assert shown.returncode == 0, shown.stderr
    for verb in ("annotate", "export", "inspect", "models", "train"):
        assert f"  {verb} " in shown.stdout


def test_inspect_takes_a_registry_name(local_registry):
    done = run_cli_without_torch("inspect", "test_model")
    assert done.returncode == 0, done.stderr
    assert "Metadata sha256: " in done.stdout and "(verified)" in done.stdout
    missing = run_cli_without_torch("inspect", "no_such_model")
    assert missing.returncode == 1
    assert "not a registry model (registry models: test_model" in missing.stderr
