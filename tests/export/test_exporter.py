"""ONNX export: parity with torch, metadata, input modes, precisions, errors, determinism."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import scnym.export.exporter as exporter
from click.testing import CliRunner
from legacy import write_legacy_dir
from scipy import sparse
from scnym.api import scnym_api
from scnym.cli import main
from scnym.datasets import kang_pbmc_small
from scnym.export import ParityError, export_model
from scnym.infer.model import OnnxModel, read_metadata

FAST = {
    "preset": "new_identity_discovery",
    "n_epochs": 2,
    "batch_size": 64,
    "ssl_kwargs": {"min_epochs": 0},
}


@pytest.fixture(scope="module")
def kang():
    """A small real fixture: 400 bundled Kang cells (raw counts), stim cells unlabeled."""
    adata = kang_pbmc_small()[::5].copy()
    adata.obs["label"] = np.where(
        adata.obs["condition"] == "stim", "Unlabeled", adata.obs["cell_type"].astype(str)
    )
    return adata


@pytest.fixture(scope="module")
def model_dir(kang, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    scnym_api(kang, task="train", groupby="label", out_path=str(out), config=FAST)
    return out


@pytest.fixture(scope="module")
def model_genes(model_dir) -> list[str]:
    """The genes the model reads (its marker genes, a subset of the data's)."""
    return json.loads((model_dir / "scnym_model.json").read_text())["gene_names"]


def test_fp32_parity_on_synthetic_counts(model_dir, tmp_path):
    report = export_model(model_dir, tmp_path / "m.onnx")
    assert report.check_source == "synthetic" and report.n_check_cells == 512
    assert report.max_prob_diff <= 1e-5 and report.max_embed_diff <= 1e-4
    assert report.argmax_agreement_torch == 1.0
    onnx.checker.check_model(onnx.load(tmp_path / "m.onnx"))
    assert report.size_bytes == (tmp_path / "m.onnx").stat().st_size


def test_onnx_reproduces_scnym_predict_on_real_cells(kang, model_dir, tmp_path):
    report = export_model(model_dir, tmp_path / "m.onnx", check=kang)
    assert report.n_check_cells == kang.n_obs and report.max_prob_diff <= 1e-5
    model = OnnxModel(tmp_path / "m.onnx")
    # The model reads its marker genes; each cell's total is over all of its genes.
    columns = kang.var_names.get_indexer(model.genes)
    assert np.all(columns >= 0) and len(columns) < kang.n_vars
    counts = kang.X.toarray()
    out = model.run(counts[:, columns], total_counts=counts.sum(axis=1))
    reference = kang.copy()
    scnym_api(reference, task="predict", trained_model=str(model_dir))
    np.testing.assert_allclose(
        out.probabilities, reference.uns["scNym_probabilities"].to_numpy(), atol=1e-5
    )
    np.testing.assert_allclose(out.embedding, reference.obsm["X_scnym"], atol=1e-4)
    classes = np.array(model.classes)[out.predicted_class]
    np.testing.assert_array_equal(classes, reference.obs["scNym"].astype(str).to_numpy())


def test_metadata_round_trip(model_dir, model_genes, tmp_path):
    export_model(model_dir, tmp_path / "m.onnx")
    meta = read_metadata(tmp_path / "m.onnx")
    manifest = json.loads((model_dir / "scnym_model.json").read_text())
    assert meta["format_version"] == 1
    assert meta["genes"] == model_genes and meta["gene_id_type"] == "symbol"
    assert meta["classes"] == manifest["class_names"]
    assert meta["preprocessing"]["input_mode"] == "counts"
    assert meta["preprocessing"]["target_sum"] == 1e6
    assert meta["preprocessing"]["training_input"] == "counts"
    selection = meta["preprocessing"]["gene_selection"]
    assert selection == manifest["preprocessing"]["gene_selection"]
    assert selection["n_genes"] == len(model_genes) and selection["markers_per_class"] == 300
    assert meta["model_kwargs"]["n_hidden"] == 256
    assert meta["training"]["data"]["cells_per_class"] == manifest["data"]["cells_per_class"]
    assert meta["metrics"]["final_acc"] == manifest["metrics"]["final_acc"]
    # the threshold is the one calibration chose on held-out reference cells (issue 14)
    calibration = manifest["calibration"]
    assert meta["confidence_threshold"] == calibration["confidence_threshold"] is not None
    assert meta["calibration"]["temperature"] == calibration["temperature"] > 0
    assert meta["created"] == manifest["created"]
    assert len(meta["weights_sha256"]) == 64
    assert meta["producer"]["opset"] == 17


def test_metadata_and_inference_without_torch(model_dir, tmp_path):
    """The reading side needs onnxruntime only: torch is blocked at import."""
    path = tmp_path / "m.onnx"
    export_model(model_dir, path)
    script = textwrap.dedent(
        f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked")
        sys.meta_path.insert(0, Block())
        import numpy as np
        from scnym.infer.model import OnnxModel
        model = OnnxModel({str(path)!r})
        out = model.run(np.ones((3, len(model.genes)), dtype=np.float32))
        assert out.probabilities.shape == (3, len(model.classes))
        assert "torch" not in sys.modules
        print(len(model.genes), model.classes[0])
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == str(len(read_metadata(path)["genes"]))


def test_input_modes_agree(kang, model_dir, model_genes, tmp_path):
    export_model(model_dir, tmp_path / "counts.onnx", input_mode="counts")
    export_model(model_dir, tmp_path / "log.onnx", input_mode="log1p_cpm")
    counts = kang[:100, model_genes].X.toarray()
    total = kang[:100].X.sum(axis=1).A1  # cells hold counts outside the model's genes too
    by_counts = OnnxModel(tmp_path / "counts.onnx").run(counts, total_counts=total)
    log_model = OnnxModel(tmp_path / "log.onnx")
    assert log_model.input_names == ["log1p_cpm"]
    by_log = log_model.run(np.log1p(counts / total[:, None] * 1e6))
    np.testing.assert_allclose(by_log.probabilities, by_counts.probabilities, atol=1e-5)
    np.testing.assert_array_equal(by_log.predicted_class, by_counts.predicted_class)


def test_check_data_in_log1p_cpm_works(kang, model_dir, tmp_path):
    normed = kang.copy()
    X = normed.X.toarray()
    normed.X = sparse.csr_matrix(np.log1p(X / X.sum(axis=1, keepdims=True) * 1e6))
    report = export_model(model_dir, tmp_path / "m.onnx", check=normed)
    assert report.max_prob_diff <= 1e-5


def test_original_032_directory_exports(tmp_path):
    genes = [f"GENE{i}" for i in range(40)]
    write_legacy_dir(tmp_path, genes, ["B", "Mono", "T"])
    report = export_model(tmp_path, tmp_path / "legacy.onnx", input_mode="log1p_cpm")
    assert report.max_prob_diff <= 1e-5
    meta = read_metadata(tmp_path / "legacy.onnx")
    assert meta["classes"] == ["B", "Mono", "T"] and meta["genes"] == genes
    assert meta["preprocessing"]["training_input"] == "log1p_cpm"
    assert meta["producer"]["trained_by"] == "scnym 0.3.2"


def test_same_weights_give_identical_bytes(model_dir, tmp_path):
    export_model(model_dir, tmp_path / "a.onnx")
    export_model(model_dir, tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_fp16_stores_half_size_weights_and_agrees(kang, model_dir, tmp_path):
    fp32 = export_model(model_dir, tmp_path / "fp32.onnx", check=kang)
    report = export_model(model_dir, tmp_path / "fp16.onnx", "fp16", check=kang)
    assert report.argmax_agreement_fp32 >= 0.995
    assert report.size_bytes < 0.55 * fp32.size_bytes
    assert read_metadata(tmp_path / "fp16.onnx")["precision"] == "fp16"


def test_int8_reports_its_agreement_with_fp32(kang, model_dir, model_genes, tmp_path):
    export_model(model_dir, tmp_path / "fp32.onnx", check=kang)
    # A 2-epoch model has many near-ties, so int8 may fall below the 99.5 % gate: force it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = export_model(model_dir, tmp_path / "int8.onnx", "int8", check=kang, force=True)
    counts = kang[:, model_genes].X.toarray()
    total = kang.X.sum(axis=1).A1
    expected = np.mean(
        OnnxModel(tmp_path / "int8.onnx").run(counts, total).predicted_class
        == OnnxModel(tmp_path / "fp32.onnx").run(counts, total).predicted_class
    )
    assert report.argmax_agreement_fp32 == pytest.approx(expected)
    assert report.argmax_agreement_fp32 > 0.9
    assert report.size_bytes < 0.4 * (tmp_path / "fp32.onnx").stat().st_size
    assert read_metadata(tmp_path / "int8.onnx")["precision"] == "int8"


def test_low_agreement_refuses_unless_forced(kang, model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(exporter, "MIN_AGREEMENT", 1.01)
    with pytest.raises(ParityError, match="Nothing was written"):
        export_model(model_dir, tmp_path / "int8.onnx", "int8", check=kang)
    assert not (tmp_path / "int8.onnx").exists()
    with pytest.warns(UserWarning, match="written anyway"):
        export_model(model_dir, tmp_path / "int8.onnx", "int8", check=kang, force=True)
    assert (tmp_path / "int8.onnx").exists()


def test_failed_parity_writes_nothing(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(exporter, "PROB_TOLERANCE", -1.0)
    with pytest.raises(ParityError, match="does not match torch"):
        export_model(model_dir, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_incomplete_or_corrupt_model_directory(model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="00_best_model_weights.pkl"):
        export_model(tmp_path, tmp_path / "m.onnx")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("scnym_model.json", "scnym_train_results.pkl"):
        (broken / name).write_bytes((model_dir / name).read_bytes())
    (broken / "00_best_model_weights.pkl").write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match="Cannot read weights"):
        export_model(broken, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_bad_precision_and_no_shared_genes(kang, model_dir, tmp_path):
    with pytest.raises(ValueError, match="precision"):
        export_model(model_dir, tmp_path / "m.onnx", precision="fp8")
    other = kang.copy()
    other.var_names = [f"ENSG{i:011d}" for i in range(other.n_vars)]
    with pytest.raises(ValueError, match="shares no genes"):
        export_model(model_dir, tmp_path / "m.onnx", check=other)


def test_cli_export_and_inspect(kang, model_dir, model_genes, tmp_path):
    check = tmp_path / "check.h5ad"
    kang.write_h5ad(check)
    runner = CliRunner()
    result = runner.invoke(
        main, ["export", str(model_dir), "-o", str(tmp_path / "m.onnx"), "--check", str(check)]
    )
    assert result.exit_code == 0, result.output
    assert "max |d prob|" in result.output and "cells/s" in result.output
    shown = runner.invoke(main, ["inspect", str(tmp_path / "m.onnx")])
    assert shown.exit_code == 0, shown.output
    assert f"Genes: {len(model_genes)} symbol" in shown.output
    assert f"chosen from {kang.n_vars}: largest |coefficient| per class" in shown.output
    threshold = read_metadata(tmp_path / "m.onnx")["confidence_threshold"]
    assert "Classes (" in shown.output and f"Confidence threshold: {threshold:.4g}" in shown.output
    as_json = json.loads(
        runner.invoke(main, ["inspect", "--json", str(tmp_path / "m.onnx")]).output
    )
    assert as_json["genes"] == model_genes


def test_inspect_refuses_an_onnx_file_without_scnym_metadata(tmp_path):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    onnx.save(onnx.helper.make_model(graph), tmp_path / "plain.onnx")
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "plain.onnx")])
    assert result.exit_code == 1 and "carries no scNym metadata" in result.output
    assert ort.get_available_providers()
