"""Fixtures shared by the test packages: an exported ONNX model and a temporary model registry."""

import json
import shutil
import sys
from pathlib import Path

import pytest

# tests/ holds shared helpers (synthetic.py) importable by every test package.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def onnx_model(tmp_path_factory):
    """An ONNX model exported from a quick training run on synthetic counts."""
    from scnym.api import scnym_api
    from scnym.export import export_model
    from synthetic import make_counts

    root = tmp_path_factory.mktemp("onnx")
    adata = make_counts(n_cells=300, n_genes=60, n_classes=3, seed=11)
    config = {"preset": "new_identity_discovery", "n_epochs": 2, "batch_size": 64,
              "ssl_kwargs": {"min_epochs": 0}}  # fmt: skip
    scnym_api(adata, task="train", groupby="label", out_path=str(root / "model"), config=config)
    export_model(root / "model", root / "model.onnx")
    return root / "model.onnx"


@pytest.fixture()
def registry_path(tmp_path, monkeypatch) -> Path:
    """An empty registry file made the default ($SCNYM_REGISTRY), with an empty $SCNYM_CACHE."""
    folder = tmp_path / "registry"
    folder.mkdir()
    path = folder / "registry.json"
    path.write_text(json.dumps({"schema_version": 1, "entries": []}))
    monkeypatch.setenv("SCNYM_REGISTRY", str(path))
    monkeypatch.setenv("SCNYM_CACHE", str(tmp_path / "cache"))
    return path


@pytest.fixture()
def local_registry(registry_path, onnx_model):
    """The temporary registry holding a human model (``pretrained_human``) and atlas (``atlas_human``).

    The atlas: 120 labeled cells of 150 genes, log1p(CPM), labels in ``obs['cell_type']``.
    """
    from scnym.models import add_entry, entry_for_file, load_registry
    from synthetic import log1p_cpm, make_counts

    folder = registry_path.parent
    model = folder / "test_model.onnx"
    shutil.copy(onnx_model, model)
    common = {"species": "human", "tissue": "synthetic", "license": "CC0"}
    add_entry(
        entry_for_file(
            model, "test_model", "model", aliases=["pretrained_human"],
            description="3 synthetic cell types", trained_on={"dataset": "make_counts seed 11"},
            **common,
        )
    )  # fmt: skip
    atlas = log1p_cpm(make_counts(n_cells=120, n_genes=150, n_classes=3, seed=21))
    atlas.obs = atlas.obs[["cell_type"]].copy()
    atlas.write_h5ad(folder / "test_atlas.h5ad")
    add_entry(
        entry_for_file(
            folder / "test_atlas.h5ad", "test_atlas", "atlas", aliases=["atlas_human"],
            label_key="cell_type", description="synthetic atlas",
            trained_on={"dataset": "make_counts seed 21"}, **common,
        )
    )  # fmt: skip
    return load_registry()
