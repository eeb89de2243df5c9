"""Model directories: round trip, scNym 0.3.2's layout, safe loading, clear errors."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from legacy import write_legacy_dir
from scnym.api import scnym_api
from scnym.model import CellTypeCLF
from scnym.modeldir import MANIFEST_FILE, RESULTS_FILE, WEIGHTS_FILE, load_model_dir
from synthetic import log1p_cpm, make_counts


def test_round_trip_gives_identical_predictions(tmp_path):
    adata = make_counts(n_cells=160, n_genes=30, seed=1)
    scnym_api(
        adata,
        task="train",
        groupby="label",
        out_path=str(tmp_path),
        config={"n_epochs": 2, "ssl_kwargs": {"min_epochs": 0}},
    )
    bundle = load_model_dir(tmp_path)
    assert not bundle.model.training
    assert bundle.gene_names == adata.var_names.tolist()
    x = torch.from_numpy(log1p_cpm(adata).X[:20])
    saved = CellTypeCLF(30, 3)
    saved.load_state_dict(torch.load(tmp_path / WEIGHTS_FILE, weights_only=True))
    saved.eval()
    with torch.no_grad():
        torch.testing.assert_close(bundle.model(x), saved(x))


def test_original_032_directory_loads_and_predicts_like_the_original(tmp_path):
    adata = log1p_cpm(make_counts(n_cells=50, n_genes=20, seed=2))
    classes = ["B", "Mono", "T"]
    reference = write_legacy_dir(tmp_path, adata.var_names.tolist(), classes)
    bundle = load_model_dir(tmp_path)
    assert bundle.class_names == classes
    assert bundle.manifest["preprocessing"]["input"] == "log1p_cpm"
    x = torch.from_numpy(adata.X)
    with torch.no_grad():
        torch.testing.assert_close(bundle.model(x), reference(x))
    scnym_api(adata, task="predict", trained_model=str(tmp_path))
    expected = np.array(classes)[reference(x).argmax(1).numpy()]
    np.testing.assert_array_equal(adata.obs["scNym"].astype(str).to_numpy(), expected)
    torch.testing.assert_close(
        torch.from_numpy(adata.obsm["X_scnym"]), reference[:-1](x), atol=1e-5, rtol=1e-5
    )


def test_legacy_state_without_the_aliased_layer_keys_still_loads(tmp_path):
    genes = [f"gene_{i}" for i in range(15)]
    reference = write_legacy_dir(tmp_path, genes, ["a", "b"])
    state = torch.load(tmp_path / WEIGHTS_FILE, weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith(("classif.8.", "classif.9."))}
    torch.save(state, tmp_path / WEIGHTS_FILE)
    x = torch.rand(5, 15) * 5
    with torch.no_grad():
        torch.testing.assert_close(load_model_dir(tmp_path).model(x), reference(x))


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_results_pickle_is_loaded_without_running_code(tmp_path):
    genes = [f"gene_{i}" for i in range(15)]
    write_legacy_dir(tmp_path, genes, ["a", "b"])
    with open(tmp_path / RESULTS_FILE, "wb") as fh:
        pickle.dump({"gene_names": genes, "class_names": ["a", "b"], "x": _Exploit()}, fh)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        load_model_dir(tmp_path)
    assert not (tmp_path / "pwned.txt").exists()


def test_missing_directory_and_missing_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model_dir(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=WEIGHTS_FILE):
        load_model_dir(tmp_path)


def test_missing_names_file(tmp_path):
    write_legacy_dir(tmp_path, [f"g{i}" for i in range(15)], ["a", "b"])
    (tmp_path / RESULTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="gene and class names unknown"):
        load_model_dir(tmp_path)


def test_corrupt_weights(tmp_path):
    write_legacy_dir(tmp_path, [f"g{i}" for i in range(15)], ["a", "b"])
    (tmp_path / WEIGHTS_FILE).write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="Cannot read weights"):
        load_model_dir(tmp_path)


def test_weights_that_do_not_fit_the_manifest(tmp_path):
    write_legacy_dir(tmp_path, [f"g{i}" for i in range(15)], ["a", "b"])
    manifest = {"gene_names": [f"g{i}" for i in range(16)], "class_names": ["a", "b"]}
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="do not match 16 genes"):
        load_model_dir(tmp_path)
