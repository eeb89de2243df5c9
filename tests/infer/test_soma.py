"""TileDB-SOMA input: an Experiment in the Census layout annotated like the same cells in zarr."""

from __future__ import annotations

import sys

import anndata
import numpy as np
import pandas as pd
import pytest
from annotation_checks import tree_digest
from click.testing import CliRunner
from scnym.cli import main
from scnym.infer import annotate
from scnym.infer.partial import partial_folder
from sources import assert_same_results, write_soma

pytest.importorskip("tiledbsoma")

FILTER = "domain == 'target'"


@pytest.fixture()
def experiment(query, tmp_path):
    return write_soma(query, tmp_path / "soma")


def _zarr_run(adata, onnx_model, tmp_path, name="zarr"):
    store = tmp_path / f"{name}.zarr"
    adata.write_zarr(store)
    annotate(store, onnx_model, batch_size=50, progress=False)
    return anndata.read_zarr(store)


def test_soma_equals_zarr_and_is_never_written(query, onnx_model, experiment, tmp_path):
    before = tree_digest(tmp_path / "soma")
    with pytest.raises(ValueError, match="pass --output"):
        annotate(experiment, onnx_model, gene_key="feature_name", progress=False)
    out = tmp_path / "soma_out.zarr"
    result = annotate(experiment, onnx_model, output=out, gene_key="feature_name",
                      batch_size=50, progress=False)  # fmt: skip
    assert tree_digest(tmp_path / "soma") == before
    assert result.coverage.n_found == 55
    assert_same_results(anndata.read_zarr(out), _zarr_run(query, onnx_model, tmp_path))
    assert list(result.to_df().index) == list(query.obs_names)
    assert anndata.read_zarr(out).uns["scNym_annotate"]["layer"] == "raw"


def test_obs_filter_annotates_the_selected_cells(query, onnx_model, experiment, tmp_path):
    table = tmp_path / "target.parquet"
    annotate(experiment, onnx_model, output=table, gene_key="feature_name", obs_filter=FILTER,
             batch_size=50, progress=False)  # fmt: skip
    target = query[query.obs["domain"] == "target"].copy()
    expected = _zarr_run(target, onnx_model, tmp_path, "target")
    frame = pd.read_parquet(table)
    assert list(frame.index) == list(target.obs_names)
    selected = np.flatnonzero(query.obs["domain"].to_numpy() == "target")
    np.testing.assert_array_equal(frame["soma_joinid"], selected)  # keyed by soma_joinid too
    np.testing.assert_array_equal(frame["scNym"].astype(str), expected.obs["scNym"].astype(str))
    np.testing.assert_array_equal(frame["scNym_confidence"], expected.obs["scNym_confidence"])


def test_cli_annotates_a_soma_experiment(query, onnx_model, experiment, tmp_path):
    out = tmp_path / "cli.csv"
    args = ["annotate", experiment, "--model", str(onnx_model), "-o", str(out), "--quiet",
            "--measurement", "RNA", "--layer", "raw", "--gene-key", "feature_name",
            "--obs-filter", FILTER]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "Annotated 69 cells" in result.output
    frame = pd.read_csv(out, index_col=0)
    assert list(frame.index) == list(query.obs_names[query.obs["domain"] == "target"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"measurement": "ATAC"}, r"no measurement 'ATAC': pass one of \['RNA'\]"),
        ({"layer": "counts"}, r"no X layer in measurement 'RNA' 'counts': pass one of \['raw'\]"),
        ({"gene_key": "symbol"}, r"--gene-key 'symbol' is not a var column.*feature_name"),
        ({"gene_key": "feature_name", "obs_filter": "nosuch == 1"}, "cannot be applied"),
        ({"gene_key": "feature_name", "obs_filter": "domain == 'none'"}, "selects no cells"),
        ({}, "Only 0 of 60 model genes"),  # the var index holds Ensembl-like IDs
    ],
)
def test_clear_errors(onnx_model, experiment, tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        annotate(experiment, onnx_model, output=tmp_path / "o.csv", progress=False, **options)


def test_filter_on_an_anndata_store_is_refused(query, onnx_model, tmp_path):
    store = tmp_path / "q.zarr"
    query.write_zarr(store)
    with pytest.raises(ValueError, match="TileDB-SOMA"):
        annotate(store, onnx_model, output=tmp_path / "o.csv", obs_filter=FILTER, progress=False)


def test_missing_tiledbsoma_names_the_extra(onnx_model, experiment, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tiledbsoma", None)
    with pytest.raises(ValueError, match=r"pip install 'scnym\[soma\]'"):
        annotate(experiment, onnx_model, output=tmp_path / "o.csv", progress=False)


def test_resume_beside_the_output(query, onnx_model, experiment, tmp_path, monkeypatch):
    import scnym.infer.annotation as ann
    import scnym.infer.compute as compute

    out = tmp_path / "resumed.zarr"
    options = {"output": out, "gene_key": "feature_name", "batch_size": 50, "progress": False}

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ann, "write_results", fail)
    with pytest.raises(KeyboardInterrupt):
        annotate(experiment, onnx_model, **options)
    monkeypatch.undo()
    folder = partial_folder(experiment, str(out))
    assert len(list(folder.glob("block_*.npz"))) == 5
    with pytest.raises(RuntimeError, match="run with other settings"):
        annotate(experiment, onnx_model, resume=True, **{**options, "obs_filter": FILTER})
    calls = []
    original = compute.classify_block
    monkeypatch.setattr(compute, "classify_block", lambda *a: calls.append(1) or original(*a))
    annotate(experiment, onnx_model, resume=True, **options)
    assert calls == []  # every block came from the partial results
    assert not folder.exists()
    assert_same_results(anndata.read_zarr(out), _zarr_run(query, onnx_model, tmp_path))
