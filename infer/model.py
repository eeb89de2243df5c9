"""Open an exported scNym ONNX model and read what it carries (onnxruntime only, no torch)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from .contract import (
    DIGEST_KEY,
    FORMAT_VERSION,
    INPUT_MODES,
    INPUT_NAMES,
    META_PREFIX,
    NOVELTY_OUTPUT,
    OUTPUT_NAMES,
    metadata_digest,
)
from .preprocessing import TARGET_SUM

#: Where a model runs: ``'auto'`` takes CUDA when onnxruntime has it.
Device = Literal["cpu", "cuda", "auto"]

logger = logging.getLogger(__name__)


def resolve_providers(device: Device = "cpu") -> list[str]:
    """onnxruntime execution providers for ``device`` (torch spellings such as ``'cuda:0'`` too).

    Raises
    ------
    ValueError
        For another device, or if CUDA is asked for and onnxruntime has no CUDA provider.
    """
    device = str(device)
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {device!r}")
    device = "cuda" if device.startswith("cuda") else device
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise ValueError(
            "device='cuda' needs onnxruntime's CUDA provider, which is not installed "
            f"(available: {available}). Install it with `pip install 'scnym[gpu]'` "
            "(onnxruntime-gpu, in place of onnxruntime) or use --device cpu."
        )
    return ["CPUExecutionProvider"]


#: Entry-point group of functions turning a model name into a file (the registry's:
#: ``scnym.models.model_file``). This package cannot import the registry, which sits
#: above it; the entry point inverts that dependency.
RESOLVERS_GROUP = "scnym.model_resolvers"


def resolve_model(model: str | os.PathLike) -> Path:
    """The ONNX file ``model`` names: a file as it is, else a registry model's verified file.

    Raises
    ------
    ValueError
        For a model directory (it needs ``scnym export`` first), or a name that
        no resolver knows (the registry's message lists its models).
    """
    path = Path(model)
    if path.is_file():
        return path
    if path.is_dir():
        raise ValueError(
            f"{model} is a model directory: onnxruntime reads an exported file. Export it once "
            f"with `scnym export {model} -o model.onnx` (needs torch), then pass model.onnx"
        )
    resolvers = entry_points(group=RESOLVERS_GROUP)
    if not resolvers:
        raise FileNotFoundError(f"ONNX model {model} does not exist")
    return Path(next(iter(resolvers)).load()(str(model)))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Return the scNym metadata of an ONNX file as a dict (JSON values decoded).

    Raises
    ------
    ValueError
        If the file is not an ONNX model written by ``scnym export``.
    """
    session = _session(path, providers=["CPUExecutionProvider"])
    return _metadata(session, path)


def _session(path, providers, threads: int | None = None) -> ort.InferenceSession:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model {path} does not exist")
    options = ort.SessionOptions()
    # No arena: it keeps the largest block's buffers for the session's life, which
    # would double the peak memory of streaming for little speed.
    options.enable_cpu_mem_arena = False
    # Streaming reads and encodes the next block between runs, on the same cores:
    # workers spinning after each run would take those cores from it.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as err:  # onnxruntime raises its own exception types
        raise ValueError(f"{path} is not a readable ONNX model: {err}") from err


def _metadata(session: ort.InferenceSession, path) -> dict[str, Any]:
    """The file's scNym metadata, its seal verified and every field checked against the graph.

    Raises
    ------
    ValueError
        For a file without scNym metadata, a newer format, metadata edited after
        export, or a field that is malformed or disagrees with the graph (named).
    """
    raw = session.get_modelmeta().custom_metadata_map
    meta = {}
    for key, value in raw.items():
        if key.startswith(META_PREFIX):
            try:
                meta[key[len(META_PREFIX) :]] = json.loads(value)
            except ValueError as err:
                raise ValueError(f"{path}: metadata field {key!r} is not JSON: {err}") from err
    if "genes" not in meta or "classes" not in meta:
        raise ValueError(f"{path} carries no scNym metadata: export it with `scnym export`")
    if not isinstance(meta.get("format_version", 0), int) or meta.get("format_version", 0) > (
        FORMAT_VERSION
    ):
        raise ValueError(
            f"{path} uses metadata format {meta.get('format_version')!r}; this scnym reads up "
            f"to {FORMAT_VERSION}: upgrade scnym"
        )
    if DIGEST_KEY in meta and meta[DIGEST_KEY] != metadata_digest(meta):
        raise ValueError(
            f"{path}: its metadata was changed after export ({DIGEST_KEY} does not match): "
            "genes, classes or settings may no longer fit the weights. Export the model again."
        )
    _check_fields(meta, session, path)
    return meta


def _check_fields(meta: dict[str, Any], session: ort.InferenceSession, path) -> None:
    """Check each field's type, and the genes, classes and input mode against the graph."""
    for field_name in ("genes", "classes"):
        values = meta[field_name]
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, str) for v in values)
        ):
            raise ValueError(f"{path}: metadata field {field_name!r} must be a list of names")
        if len(set(values)) != len(values):
            raise ValueError(f"{path}: metadata field {field_name!r} repeats names")
    prep = meta.get("preprocessing")
    if not isinstance(prep, dict) or prep.get("input_mode") not in INPUT_MODES:
        raise ValueError(
            f"{path}: metadata field 'preprocessing' must hold input_mode, one of {INPUT_MODES}"
        )
    target = prep.get("target_sum", TARGET_SUM)
    if isinstance(target, bool) or not isinstance(target, int | float) or target <= 0:
        raise ValueError(f"{path}: metadata field 'preprocessing.target_sum' must be > 0")
    threshold = meta.get("confidence_threshold")
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, int | float) or
        not 0 <= threshold <= 1
    ):  # fmt: skip
        raise ValueError(f"{path}: metadata field 'confidence_threshold' must be in [0, 1]")
    inputs = {i.name: i.shape for i in session.get_inputs()}
    expected = INPUT_NAMES[prep["input_mode"]]
    if sorted(inputs) != sorted(expected):
        raise ValueError(
            f"{path}: metadata field 'preprocessing.input_mode' says {prep['input_mode']} "
            f"(inputs {list(expected)}) but the graph reads {sorted(inputs)}"
        )
    outputs = {o.name: o.shape for o in session.get_outputs()}
    _check_width(path, "genes", len(meta["genes"]), inputs[expected[0]])
    _check_width(path, "classes", len(meta["classes"]), outputs.get(OUTPUT_NAMES[0]))


def _check_width(path, field_name: str, n: int, shape) -> None:
    """The graph's second axis (when fixed) must have as many entries as the field."""
    width = shape[1] if shape is not None and len(shape) > 1 else None
    if isinstance(width, int) and width != n:
        raise ValueError(
            f"{path}: metadata field {field_name!r} has {n} entries but the graph's "
            f"{'input' if field_name == 'genes' else 'output'} has {width}"
        )


@dataclass
class Prediction:
    """Outputs of a model on a block of cells."""

    probabilities: np.ndarray
    embedding: np.ndarray
    predicted_class: np.ndarray
    novelty: np.ndarray | None = None  # None for models exported without the score


def warn_without_novelty(model: OnnxModel) -> None:
    """Say so when ``model`` predates the novelty score (the flag then reads confidence)."""
    if not model.has_novelty:
        logger.warning(
            "%s was exported without the novelty score: no %s column, and cells are flagged "
            "by confidence alone; export the model again with this version to get it",
            model.path.name, "<key_added>_novelty",
        )  # fmt: skip


class OnnxModel:
    """An exported scNym model ready to run with onnxruntime.

    Parameters
    ----------
    path
        The ``.onnx`` file.
    providers
        onnxruntime execution providers, CPU by default.
    threads
        Intra-op threads (onnxruntime's default when None).
    """

    def __init__(
        self, path: str | Path, providers: list[str] | None = None, threads: int | None = None
    ) -> None:
        self.path = Path(path)
        self.threads = threads
        self.session = _session(path, providers or ["CPUExecutionProvider"], threads)
        self.metadata = _metadata(self.session, path)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def genes(self) -> list[str]:
        return self.metadata["genes"]

    @property
    def classes(self) -> list[str]:
        return self.metadata["classes"]

    @property
    def target_sum(self) -> float:
        """Counts per cell of the CPM scale the model reads."""
        return float(self.metadata["preprocessing"].get("target_sum", TARGET_SUM))

    @property
    def has_novelty(self) -> bool:
        """Whether the graph computes the novelty score (files exported before it do not)."""
        return NOVELTY_OUTPUT in self.output_names

    @property
    def unknown_threshold(self) -> float | None:
        """The model's flag threshold: on the novelty score where the model has one (cells
        above it are flagged), else on the confidence (cells below it)."""
        if self.has_novelty:
            return (self.metadata.get("novelty") or {}).get("threshold")
        return self.metadata.get("confidence_threshold")

    @property
    def input_mode(self) -> str:
        """``'counts'`` (inputs ``counts`` and ``total_counts``) or ``'log1p_cpm'``."""
        return self.metadata["preprocessing"]["input_mode"]

    def run(self, x: np.ndarray, total_counts: np.ndarray | None = None) -> Prediction:
        """Run the model on a dense block ``[cells, model genes]``.

        Parameters
        ----------
        x
            Raw counts (``input_mode == 'counts'``) or log1p(CPM) values, in the
            model's gene order.
        total_counts
            Each cell's total counts over all its genes (counts mode only);
            defaults to the row sums of ``x``.
        """
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.input_mode == "counts":
            if total_counts is None:
                total_counts = x.sum(axis=1)
            total = np.ascontiguousarray(total_counts, dtype=np.float32).reshape(-1)
            feeds = dict(zip(INPUT_NAMES["counts"], (x, total), strict=True))
        else:
            feeds = dict(zip(INPUT_NAMES["log1p_cpm"], (x,), strict=True))
        names = list(OUTPUT_NAMES) + ([NOVELTY_OUTPUT] if self.has_novelty else [])
        return Prediction(*self.session.run(names, feeds))
