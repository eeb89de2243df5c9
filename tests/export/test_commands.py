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
