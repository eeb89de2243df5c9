"""A model file is one sealed whole: edited or malformed metadata is refused before any cell is read."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
import zarr
from anndata.io import write_elem
from annotation_checks import tree_digest, write_store
from scnym.infer import OnnxModel, annotate
from scnym.infer.contract import DIGEST_KEY, META_PREFIX
from scnym.infer.partial import partial_folder


def rewrite(source: Path, target: Path, edit: Callable[[dict], None], reseal: bool) -> Path:
    """A copy of ``source`` with its metadata edited (and sealed again when ``reseal``)."""
    from scnym.export.metadata import attach_metadata

    proto = onnx.load(source)
    meta = {
        p.key[len(META_PREFIX) :]: json.loads(p.value)
        for p in proto.metadata_props
        if p.key.startswith(META_PREFIX)
    }
    edit(meta)
    if reseal:
        meta.pop(DIGEST_KEY, None)
        attach_metadata(proto, meta)
    else:
        del proto.metadata_props[:]
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = META_PREFIX + key, json.dumps(value)
    onnx.save(proto, target)
    return target


def test_an_export_is_sealed_and_an_edit_breaks_the_seal(onnx_model, tmp_path):
    assert DIGEST_KEY in OnnxModel(onnx_model).metadata
    reordered = rewrite(
        onnx_model, tmp_path / "m.onnx", lambda m: m["classes"].reverse(), reseal=False
    )
    with pytest.raises(ValueError, match="changed after export"):
        OnnxModel(reordered)


def _drop_digest(edit):
    def edited(meta):
        meta.pop(DIGEST_KEY)
        edit(meta)

    return edited


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["genes"].pop(), r"'genes' has 59 entries but the graph's input has 60"),
        (lambda m: m["classes"].append("extra"), r"'classes' has 4 entries but the graph's output"),
        (lambda m: m.update(classes="B cells"), "'classes' must be a list of names"),
        (lambda m: m.update(genes=["g"] * 60), "'genes' repeats names"),
        (lambda m: m.pop("preprocessing"), "'preprocessing' must hold input_mode"),
        (lambda m: m["preprocessing"].update(input_mode="log1p_cpm"), "the graph reads"),
        (lambda m: m["preprocessing"].update(target_sum=0), "'preprocessing.target_sum'"),
        (lambda m: m.update(confidence_threshold=2), "'confidence_threshold' must be in"),
        (lambda m: m.update(format_version=99), "format 99"),
    ],
)  # fmt: skip
def test_malformed_metadata_is_named_before_any_cell_is_read(
    query, onnx_model, tmp_path, edit, message
):
    bad = rewrite(onnx_model, tmp_path / "bad.onnx", _drop_digest(edit), reseal=False)
    store = write_store(query, tmp_path)
    before = tree_digest(store)
    with pytest.raises(ValueError, match=message):
        annotate(store, bad, progress=False)
    assert tree_digest(store) == before
    assert not partial_folder(str(store), None).exists()


def test_a_value_that_is_not_json_is_named(onnx_model, tmp_path):
    proto = onnx.load(onnx_model)
    for entry in proto.metadata_props:
        if entry.key == META_PREFIX + "classes":
            entry.value = "[B, T"
    onnx.save(proto, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="'scnym.classes' is not JSON"):
        OnnxModel(tmp_path / "m.onnx")


def _interrupted_run(query, model, tmp_path) -> Path:
    """A store whose annotation stopped after its first block (the partial folder stays)."""
    store = tmp_path / "q.zarr"
    query.write_zarr(store, chunks=(40, query.n_vars))
    from scnym.infer import partial as partial_module

    original = partial_module.PartialResults.save
    calls = []

    def save_then_stop(self, start, arrays):
        original(self, start, arrays)
        calls.append(start)
        if len(calls) == 1:
            raise KeyboardInterrupt

    partial_module.PartialResults.save = save_then_stop
    try:
        with pytest.raises(KeyboardInterrupt):
            annotate(store, model, batch_size=40, progress=False)
    finally:
        partial_module.PartialResults.save = original
    assert partial_folder(str(store), None).exists()
    return store


def test_resume_refuses_another_models_blocks(query, onnx_model, tmp_path):
    store = _interrupted_run(query, onnx_model, tmp_path)
    other = rewrite(
        onnx_model, tmp_path / "other.onnx", lambda m: m["classes"].reverse(), reseal=True
    )  # same weights, other metadata
    with pytest.raises(RuntimeError, match="other settings"):
        annotate(store, other, batch_size=40, resume=True, progress=False)


def test_resume_refuses_blocks_of_a_store_whose_genes_changed(query, onnx_model, tmp_path):
    store = _interrupted_run(query, onnx_model, tmp_path)
    renamed = query.copy()
    renamed.var_names = [*renamed.var_names[:-1], "another_gene"]
    shutil.rmtree(store / "var")
    write_elem(zarr.open_group(store, mode="r+", use_consolidated=False), "var", renamed.var)
    with pytest.raises(RuntimeError, match="other settings"):
        annotate(store, onnx_model, batch_size=40, resume=True, progress=False)
