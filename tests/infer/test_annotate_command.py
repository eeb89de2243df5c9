"""The ``scnym annotate`` command (scnym.infer.commands): torch-free, errors in one line.

Named test_annotate_command.py: pytest imports test modules by basename, and
tests/export/test_commands.py exists.
"""

from __future__ import annotations

import anndata
from annotation_checks import check_equal, write_store
from click.testing import CliRunner
from scnym.cli import main
from torchless import run_cli_without_torch


def test_cli_annotate_with_torch_blocked(query, onnx_model, tmp_path):
    store = tmp_path / "q.zarr"
    query.write_zarr(store)
    done = run_cli_without_torch("annotate", str(store), "--model", str(onnx_model), "--quiet")
    assert done.returncode == 0, done.stderr
    assert "Gene coverage: 55/60 model genes" in done.stdout
    written = anndata.read_zarr(store)
    check_equal(written, query, onnx_model)
    flagged = int(written.obs["scNym_unknown"].sum())
    share = flagged / written.n_obs
    assert f"Flagged as unlike the reference (novelty): {flagged:,} cells ({share:.1%})" in (
        done.stdout
    )


def test_cli_annotate_reports_errors_in_one_line(query, onnx_model, tmp_path):
    adata = query.copy()
    adata.var_names = [f"ENSG{i:011d}" for i in range(adata.n_vars)]
    store = write_store(adata, tmp_path)
    result = CliRunner().invoke(main, ["annotate", str(store), "--model", str(onnx_model)])
    assert result.exit_code == 1
    assert result.output.startswith("Error: Only 0 of 60 model genes")


def test_cli_annotate_with_an_unknown_model_name(query, registry_path, tmp_path):
    """Neither a file nor in the (empty) registry: a one-line usage error, no traceback."""
    store = write_store(query, tmp_path)
    result = CliRunner().invoke(main, ["annotate", str(store), "--model", "nosuchmodel"])
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.output == (
        "Error: --model nosuchmodel: no such file, and not a registry model "
        "(registry models: none); see `scnym models list`\n"
    )
    assert not (tmp_path / "bad.zarr.scnym-partial").exists()
