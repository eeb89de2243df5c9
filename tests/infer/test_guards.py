"""Nothing a user owns is lost: the input store, an existing output, the user's own keys."""

from __future__ import annotations

import errno
import os

import anndata
import pytest
from annotation_checks import check_equal, tree_digest, write_store
from click.testing import CliRunner
from scnym.cli import main
from scnym.infer import annotate
from scnym.infer.contract import ANNOTATE_RECORD_KEY
from scnym.infer.partial import PartialResults, partial_folder


@pytest.mark.parametrize("spelling", ["same", "slash", "relative", "inside"])
def test_the_input_store_is_never_the_output(query, onnx_model, tmp_path, monkeypatch, spelling):
    store = write_store(query, tmp_path)
    before = tree_digest(store)
    monkeypatch.chdir(tmp_path)
    output = {
        "same": str(store),
        "slash": f"{store}/",
        "relative": os.path.join(".", store.name),
        "inside": str(store / "sub.zarr"),
    }[spelling]
    with pytest.raises(ValueError, match="is the input store"):
        annotate(store, onnx_model, output=output, progress=False)
    result = CliRunner().invoke(main, ["annotate", str(store), "--model", str(onnx_model),
                                       "-o", output, "--overwrite", "--quiet"])  # fmt: skip
    assert result.exit_code == 1 and result.output.startswith("Error: --output")
    assert tree_digest(store) == before
    assert not partial_folder(str(store), None).exists()


@pytest.mark.parametrize("suffix", [".zarr", ".h5ad", ".csv"])
def test_an_existing_output_is_replaced_only_with_overwrite(query, onnx_model, tmp_path, suffix):
    store = write_store(query, tmp_path)
    output = tmp_path / f"results{suffix}"
    annotate(store, onnx_model, output=output, key_added="first", progress=False)
    before = tree_digest(output)
    with pytest.raises(ValueError, match="exists: pass --overwrite"):
        annotate(store, onnx_model, output=output, key_added="second", progress=False)
    assert tree_digest(output) == before
    annotate(store, onnx_model, output=output, key_added="second", overwrite=True, progress=False)
    assert tree_digest(output) != before
    if suffix == ".zarr":
        written = anndata.read_zarr(output)
        assert "second" in written.obs and "first" not in written.obs


@pytest.mark.parametrize("key", ["", "a/b", "_index", ".hidden"])
def test_a_key_added_that_cannot_name_columns_is_refused(query, onnx_model, tmp_path, key):
    store = write_store(query, tmp_path)
    before = tree_digest(store)
    with pytest.raises(ValueError, match="not a usable name"):
        annotate(store, onnx_model, key_added=key, progress=False)
    assert tree_digest(store) == before


def test_the_users_own_columns_are_never_replaced(query, onnx_model, tmp_path):
    query.obs["cell_type"] = "mine"
    query.obsm["X_scnym"] = query.X[:, :4].toarray() if hasattr(query.X, "toarray") else query.X
    store = write_store(query, tmp_path)
    before = tree_digest(store)
    with pytest.raises(ValueError, match=r"obs/cell_type.*no scNym run wrote"):
        annotate(store, onnx_model, key_added="cell_type", progress=False)
    with pytest.raises(ValueError, match=r"obsm/X_scnym.*no scNym run wrote"):
        annotate(store, onnx_model, progress=False)
    assert tree_digest(store) == before
    # into an output the user's keys are not at stake
    annotate(store, onnx_model, output=tmp_path / "out.zarr", progress=False)
    check_equal(anndata.read_zarr(tmp_path / "out.zarr"), query, onnx_model)


def test_earlier_scnym_results_are_replaced_and_recorded(query, onnx_model, tmp_path):
    store = write_store(query, tmp_path)
    annotate(store, onnx_model, progress=False)
    annotate(store, onnx_model, key_added="again", progress=False)
    second = annotate(store, onnx_model, progress=False)
    record = anndata.read_zarr(store).uns[ANNOTATE_RECORD_KEY]
    ours = {"obs/scNym", "obs/scNym_confidence", "obs/scNym_novelty", "obs/scNym_unknown",
            "obsm/X_scnym"}  # fmt: skip
    assert set(record["replaced"]) == ours  # the model has the novelty score and its threshold
    assert {"scNym", "again", "again_confidence"} <= set(record["written"]["obs"])
    assert second.record["replaced"] == list(record["replaced"])
    check_equal(anndata.read_zarr(store), query, onnx_model)


def test_a_live_run_is_not_mistaken_for_an_interrupted_one(query, onnx_model, tmp_path):
    store = write_store(query, tmp_path)
    folder = partial_folder(str(store), None)
    folder.mkdir()
    (folder / "block_000000000000.npz").write_bytes(b"")  # the live run's first block
    (folder / "lock").write_text(str(os.getppid()))  # that run is alive
    with pytest.raises(RuntimeError, match=r"Another annotation run \(pid \d+.*wait for it"):
        annotate(store, onnx_model, progress=False)
    assert (folder / "lock").read_text() == str(os.getppid())  # its lock stays


def test_a_dead_runs_lock_is_taken_over_and_resume_is_asked_for(query, onnx_model, tmp_path):
    store = write_store(query, tmp_path)
    annotate(store, onnx_model, output=tmp_path / "ref.zarr", progress=False)
    folder = partial_folder(str(store), None)
    folder.mkdir()
    (folder / "block_000000000000.npz").write_bytes(b"")
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    (folder / "lock").write_text(str(dead))
    with pytest.raises(RuntimeError, match="no run holds it now.*--resume"):
        annotate(store, onnx_model, progress=False)
    assert not (folder / "lock").exists()  # the stale lock is gone, and ours released


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (PermissionError(errno.EACCES, "Permission denied", "/data/x.zarr.scnym-partial"),
         "Error: Permission denied: /data/x.zarr.scnym-partial: check the permissions"),
        (OSError(errno.ENOSPC, "No space left on device", "/data/x.zarr/obsm"),
         "Error: No space left on the device while writing /data/x.zarr/obsm"),
    ],
)  # fmt: skip
def test_system_errors_are_one_line_and_v_adds_the_traceback(
    query, onnx_model, tmp_path, monkeypatch, error, message
):
    store = write_store(query, tmp_path)

    def fail(self, resume):
        raise error

    monkeypatch.setattr(PartialResults, "open", fail)
    args = ["annotate", str(store), "--model", str(onnx_model), "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert result.output.startswith(message) and result.output.count("\n") == 1
    verbose = CliRunner().invoke(main, ["-v", *args])
    assert "Traceback" in verbose.output and message in verbose.output


def test_results_of_predict_are_scnyms_and_stale_keys_go(query, onnx_model, tmp_path):
    from scnym.infer.memory import predict_adata

    predicted = query.copy()
    predict_adata(predicted, onnx_model)  # obs/scNym*, obsm/X_scnym and their record
    store = tmp_path / "predicted.zarr"
    predicted.write_zarr(store)
    result = annotate(store, onnx_model, unknown_threshold=0.99, progress=False)
    assert "obsm/X_scnym" in result.record["replaced"]
    assert "scNym_unknown" in anndata.read_zarr(store).obs
    again = annotate(store, onnx_model, unknown_threshold=None, progress=False)
    written = anndata.read_zarr(store)
    assert "scNym_unknown" not in written.obs  # not left stale beside the new confidences
    assert again.record["removed"] == ["obs/scNym_unknown"]
    assert "scNym_unknown" not in again.record["written"]["obs"]
    in_memory = predicted.copy()
    annotate(in_memory, onnx_model, unknown_threshold=0.99, write_probabilities=True,
             progress=False)  # fmt: skip
    annotate(in_memory, onnx_model, unknown_threshold=None, progress=False)
    assert "scNym_unknown" not in in_memory.obs and "scNym_probabilities" not in in_memory.obsm
