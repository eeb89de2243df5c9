"""Open an exported scNym ONNX model and read what it carries (onnxruntime only, no torch)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from .contract import FORMAT_VERSION, INPUT_NAMES, META_PREFIX, OUTPUT_NAMES
from .preprocessing import TARGET_SUM

#: Where a model runs: ``'auto'`` takes CUDA when onnxruntime has it.
Device = Literal["cpu", "cuda", "auto"]


def resolve_providers(device: Device = "cpu") -> list[str]:
    """onnxruntime execution providers for ``device``.

    Raises
    ------
    ValueError
        If CUDA is asked for and onnxruntime has no CUDA provider.
    """
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
    raw = session.get_modelmeta().custom_metadata_map
    meta = {
        k[len(META_PREFIX) :]: json.loads(v) for k, v in raw.items() if k.startswith(META_PREFIX)
    }
    if "genes" not in meta or "classes" not in meta:
        raise ValueError(f"{path} carries no scNym metadata: export it with `scnym export`")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{path} uses metadata format {meta['format_version']}; this scnym reads up to "
            f"{FORMAT_VERSION}: upgrade scnym"
        )
    return meta


@dataclass
class Prediction:
    """Outputs of a model on a block of cells."""

    probabilities: np.ndarray
    embedding: np.ndarray
    predicted_class: np.ndarray


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
        probabilities, embedding, predicted = self.session.run(list(OUTPUT_NAMES), feeds)
        return Prediction(probabilities, embedding, predicted)
