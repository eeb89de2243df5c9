"""The registry: schema validation, writing entries, name resolution and local verification."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
import scnym.models.cache as cache
from scnym.infer import OnnxModel
from scnym.models import (
    ChecksumError,
    RegistryError,
    add_entry,
    entry_for_file,
    load_registry,
    resolve,
    verify,
)


def _valid_entry(name: str = "m", **changes) -> dict:
    entry = {
        "name": name,
        "kind": "model",
        "aliases": [f"pretrained_{name}"],
        "species": "human",
        "tissue": "blood",
        "description": "a model",
        "file": f"{name}.onnx",
        "sha256": "0" * 64,
        "size_bytes": 10,
        "n_genes": 5,
        "gene_id_type": "symbol",
        "classes": ["a", "b"],
        "trained_on": {"dataset": "d", "n_cells": 10, "cells_per_class": {"a": 5, "b": 5}},
        "license": "CC0",
        "scnym_version": "1.0.0",
    }
    entry.update(changes)
    return entry


def _write(tmp_path, entries, schema_version=1):
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"schema_version": schema_version, "entries": entries}))
    return path


def test_packaged_registry_is_valid_and_its_files_match(monkeypatch):
    monkeypatch.delenv("SCNYM_REGISTRY", raising=False)
    registry = load_registry()
    assert registry.path.name == "registry.json" and registry.path.parent.name == "models"
    for entry in registry.entries:
        if not entry.is_remote:
            assert verify(entry.name, registry).ok, entry.name


def test_a_valid_registry_round_trips(tmp_path):
    entries = [_valid_entry("m"), _valid_entry("a", kind="atlas", label_key="cell_type")]
    registry = load_registry(_write(tmp_path, entries))
    assert registry.names() == ["m", "a"] and registry.names("atlas") == ["a"]
    assert [e.to_dict() for e in registry.entries] == entries
    assert registry.entries[0].trained_on.cells_per_class == {"a": 5, "b": 5}


def _without(field):
    entry = _valid_entry()
    del entry[field]
    return entry


def _nested(**trained_on):
    entry = _valid_entry()
    entry["trained_on"] = {**entry["trained_on"], **trained_on}
    return entry


@pytest.mark.parametrize(
    ("entries", "field", "problem"),
    [
        ([_without("sha256")], "sha256", "is missing"),
        ([_without("license")], "license", "is missing"),
        ([_valid_entry(n_genes="60")], "n_genes", "must be an integer"),
        ([_valid_entry(n_genes=True)], "n_genes", "must be an integer"),
        ([_valid_entry(classes="a,b")], "classes", "must be a list"),
        ([_valid_entry(classes=[])], "classes", "must not be empty"),
        ([_valid_entry(kind="network")], "kind", "must be one of"),
        ([_valid_entry(gene_id_type="entrez")], "gene_id_type", "must be one of"),
        ([_valid_entry(sha256="ABC123")], "sha256", "64 lowercase hexadecimal"),
        ([_valid_entry(file="/abs/m.onnx")], "file", "relative path"),
        ([_valid_entry(file="../m.onnx")], "file", "relative path"),
        ([_valid_entry(name="my model")], "name", "letters, digits"),
        ([_valid_entry(kind="atlas")], "label_key", "is missing"),
        ([_valid_entry(sha265="0" * 64)], "sha265", "not a registry field"),
        ([_nested(n_cells=-1)], "trained_on.n_cells", "must be an integer"),
        ([_nested(cells_per_class=[1, 2])], "trained_on.cells_per_class", "must map"),
        ([_valid_entry("m"), _valid_entry("m")], "name", "already used by entry 'm'"),
        (
            [_valid_entry("m"), _valid_entry("n", aliases=["pretrained_m"])],
            "aliases",
            "'pretrained_m' is already used by entry 'm'",
        ),
    ],
)
def test_each_schema_mistake_names_the_entry_and_the_field(tmp_path, entries, field, problem):
    path = _write(tmp_path, entries)
    with pytest.raises(RegistryError) as info:
        load_registry(path)
    message = str(info.value)
    assert str(path) in message
    assert f"entry {entries[-1].get('name', '?')!r}" in message
    assert f"field {field!r}" in message
    assert problem in message


def test_registry_level_mistakes(tmp_path):
    with pytest.raises(RegistryError, match="upgrade scnym"):
        load_registry(_write(tmp_path, [], schema_version=2))
    with pytest.raises(RegistryError, match="'schema_version' must be an integer"):
        load_registry(_write(tmp_path, [], schema_version="1"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(RegistryError, match="not valid JSON"):
        load_registry(bad)
    with pytest.raises(RegistryError, match="does not exist"):
        load_registry(tmp_path / "missing.json")


def test_unknown_trained_on_keys_are_kept(tmp_path):
    entry = _nested(excluded="the bundled cells")
    registry = load_registry(_write(tmp_path, [entry]))
    assert registry.entries[0].trained_on.extra == {"excluded": "the bundled cells"}
    assert registry.entries[0].to_dict() == entry


def test_entry_for_file_reads_the_model_metadata(local_registry):
    entry = local_registry.get("test_model")
    path = local_registry.root / entry.file
    model = OnnxModel(path)
    assert entry.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert entry.size_bytes == path.stat().st_size
    assert entry.n_genes == len(model.genes) and list(entry.classes) == model.classes
    assert entry.gene_id_type == model.metadata["gene_id_type"]
    data = model.metadata["training"]["data"]
    assert entry.trained_on.n_cells == data["n_cells"]
    assert entry.trained_on.cells_per_class == data["cells_per_class"]
    assert entry.trained_on.dataset == "make_counts seed 11"


def test_entry_for_file_reads_the_atlas(local_registry):
    import anndata

    entry = local_registry.get("atlas_human")
    atlas = anndata.read_h5ad(local_registry.root / entry.file)
    counts = atlas.obs["cell_type"].astype(str).value_counts()
    assert entry.kind == "atlas" and entry.label_key == "cell_type"
    assert entry.n_genes == atlas.n_vars
    assert list(entry.classes) == sorted(counts.index)
    assert entry.trained_on.n_cells == atlas.n_obs
    assert entry.trained_on.cells_per_class == counts.to_dict()


def test_entry_for_file_refuses_fields_read_from_the_file(local_registry):
    path = local_registry.root / "test_model.onnx"
    with pytest.raises(RegistryError, match="'n_genes' is read from"):
        entry_for_file(path, "x", "model", n_genes=3)
    with pytest.raises(RegistryError, match="label_key"):
        entry_for_file(local_registry.root / "test_atlas.h5ad", "x", "atlas")
    outside = local_registry.root.parent / "elsewhere.onnx"
    outside.write_bytes(path.read_bytes())
    with pytest.raises(RegistryError, match="not inside the registry folder"):
        entry_for_file(outside, "x", "model", species="human", tissue="t", description="d",
                       trained_on={"dataset": "d"}, license="l")  # fmt: skip


def test_add_entry_replaces_an_entry_of_the_same_name(local_registry):
    entry = local_registry.get("test_model").to_dict()
    entry["description"] = "updated"
    add_entry(entry)
    registry = load_registry()
    assert registry.names() == ["test_model", "test_atlas"]
    assert registry.get("test_model").description == "updated"


def test_add_entry_refuses_a_wrong_digest_or_a_missing_file(local_registry):
    before = local_registry.path.read_text()
    entry = copy.deepcopy(local_registry.get("test_model").to_dict())
    entry["sha256"] = "f" * 64
    with pytest.raises(ChecksumError, match="f" * 64):
        add_entry(entry)
    entry["file"] = "nowhere.onnx"
    with pytest.raises(RegistryError, match="does not exist"):
        add_entry(entry)
    assert local_registry.path.read_text() == before


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("test_model", "test_model"),
        ("pretrained_human", "test_model"),
        ("test_atlas", "test_atlas"),
        ("atlas_human", "test_atlas"),
    ],
)
def test_names_and_aliases_resolve(local_registry, name, expected):
    entry = local_registry.get(expected)
    assert resolve(name) == local_registry.root / entry.file


def test_pretrained_species_finds_the_first_model_of_that_species(tmp_path):
    entries = [
        _valid_entry("a", kind="atlas", species="mouse", label_key="c", aliases=[]),
        _valid_entry("m1", species="Mouse", aliases=[]),
        _valid_entry("m2", species="mouse", aliases=[]),
    ]
    registry = load_registry(_write(tmp_path, entries))
    assert registry.find("pretrained_mouse").name == "m1"
    assert registry.find("atlas_mouse").name == "a"
    assert registry.find("pretrained_rat") is None
    assert registry.find("pretrained_mouse", kind="atlas") is None


def test_an_unknown_name_lists_the_available_ones(local_registry):
    with pytest.raises(RegistryError) as info:
        resolve("pretrained_rat")
    message = str(info.value)
    assert "'pretrained_rat'" in message
    assert "test_model (pretrained_human)" in message and "test_atlas (atlas_human)" in message
    with pytest.raises(RegistryError, match="available: test_model"):
        resolve("atlas_human", kind="model")


def test_a_changed_shipped_file_is_refused_but_kept(local_registry):
    path = resolve("test_model")
    path.write_bytes(path.read_bytes() + b"tampered")
    with pytest.raises(ChecksumError) as info:
        resolve("test_model")
    assert local_registry.get("test_model").sha256 in str(info.value)
    assert hashlib.sha256(path.read_bytes()).hexdigest() in str(info.value)
    assert path.exists()
    result = verify("test_model")
    assert not result.ok and not result.removed and path.exists()


def test_a_missing_shipped_file_is_reported(local_registry):
    (local_registry.root / "test_model.onnx").unlink()
    with pytest.raises(RegistryError, match="is missing"):
        resolve("pretrained_human")


def test_verification_is_computed_once_per_unchanged_file(local_registry, monkeypatch):
    calls = []
    original = cache.sha256_file
    monkeypatch.setattr(cache, "sha256_file", lambda p: calls.append(p) or original(p))
    cache._DIGESTS.clear()
    for _ in range(3):
        resolve("pretrained_human")
    assert len(calls) == 1
    assert verify("pretrained_human").ok  # verify always recomputes
    assert len(calls) == 2
