"""Export a model directory to one self-describing ONNX file, proven equal to torch."""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import anndata
import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort
import torch
from scipy import sparse
from scnym.infer.contract import INPUT_NAMES, InputMode
from scnym.infer.fileio import write_atomically
from scnym.infer.preprocessing import TARGET_SUM, detect_input_kind, gene_index_map
from scnym.modeldir import ModelBundle, load_model_dir

from .graph import DEFAULT_OPSET, ScnymGraph, to_onnx
from .metadata import attach_metadata, build_metadata

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "int8"]
#: fp32 parity with torch: largest allowed probability and embedding differences.
PROB_TOLERANCE = 1e-5
EMBED_TOLERANCE = 1e-4
#: fp32 parity of the novelty score, relative to its magnitude (at least 1): the
#: whitening amplifies float32 rounding of the logits (measured: 1e-6 to 1e-5).
NOVELTY_TOLERANCE = 1e-4
#: Least argmax agreement with fp32 for an fp16/int8 file to be written.
MIN_AGREEMENT = 0.995
#: Synthetic cells used for the parity check when no data is given.
N_SYNTHETIC = 512
CHECK_BATCH = 1024


class ParityError(RuntimeError):
    """The exported graph does not reproduce the torch model; nothing was written."""


@dataclass
class CheckData:
    """Cells to compare torch and onnxruntime on, in the model's gene order."""

    counts: np.ndarray
    total_counts: np.ndarray
    source: str

    def feeds(self, input_mode: InputMode, target_sum: float) -> dict[str, np.ndarray]:
        """The graph's inputs for these cells, by input name."""
        if input_mode == "counts":
            values = (self.counts, self.total_counts)
        else:
            scale = target_sum / np.maximum(self.total_counts, 1e-12)
            values = (np.log1p(self.counts * scale[:, None]).astype(np.float32),)
        return dict(zip(INPUT_NAMES[input_mode], values, strict=True))


@dataclass
class ExportReport:
    """What an export measured and wrote."""

    path: Path | None
    precision: str
    input_mode: str
    check_source: str
    n_check_cells: int
    max_prob_diff: float = float("nan")
    max_embed_diff: float = float("nan")
    max_novelty_diff: float = float("nan")  # relative; NaN for models without the score
    argmax_agreement_torch: float = float("nan")
    argmax_agreement_fp32: float = float("nan")
    size_bytes: int = 0
    onnx_cells_per_s: float = float("nan")
    torch_cells_per_s: float = float("nan")
    notes: list[str] = field(default_factory=list)


def synthetic_check_data(bundle: ModelBundle, n_cells: int = N_SYNTHETIC, seed: int = 0):
    """Poisson counts over the model's genes with random depths and gene profiles."""
    rng = np.random.default_rng(seed)
    n_genes = len(bundle.gene_names)
    profile = rng.gamma(0.3, 1.0, size=(8, n_genes))
    profile /= profile.sum(axis=1, keepdims=True)
    depth = rng.lognormal(np.log(3000), 0.5, size=n_cells)
    rates = profile[rng.integers(0, 8, n_cells)] * depth[:, None]
    counts = rng.poisson(rates).astype(np.float32)
    # Cells carry counts in genes outside the model too: totals exceed the model-gene sums.
    total = counts.sum(axis=1) * rng.uniform(1.0, 1.5, size=n_cells).astype(np.float32)
    return CheckData(counts, np.maximum(total, 1).astype(np.float32), "synthetic")


def check_data_from_adata(bundle: ModelBundle, adata: anndata.AnnData, source: str) -> CheckData:
    """Counts of the model's genes and totals over all genes, from raw or log1p(CPM) ``X``."""
    X = adata.X
    kind = detect_input_kind(X, what=f"{source} X")
    X = sparse.csr_matrix(X, dtype=np.float32)
    if kind == "log1p_cpm":
        X = X.copy()
        np.expm1(X.data, out=X.data)  # CPM values: counts at the CPM depth
    total = np.asarray(X.sum(axis=1)).ravel().astype(np.float32)
    index = gene_index_map(adata.var_names, bundle.gene_names)
    if (index < 0).all():
        raise ValueError(f"{source} shares no genes with the model")
    dense = np.zeros((adata.n_obs, len(index)), dtype=np.float32)
    found = index >= 0
    dense[:, found] = X[:, index[found]].toarray()
    keep = total > 0
    return CheckData(dense[keep], total[keep], source)


def _torch_outputs(graph: ScnymGraph, data: CheckData):
    feeds = data.feeds(graph.input_mode, graph.target_sum)
    outs = []
    graph.eval()
    with torch.no_grad():
        for start in range(0, len(data.counts), CHECK_BATCH):
            args = [torch.from_numpy(v[start : start + CHECK_BATCH]) for v in feeds.values()]
            outs.append([t.numpy() for t in graph(*args)])
    return [np.concatenate(parts) for parts in zip(*outs, strict=True)]


def _onnx_outputs(model_bytes: bytes, data: CheckData, graph: ScnymGraph):
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    feeds = data.feeds(graph.input_mode, graph.target_sum)
    outs = []
    for start in range(0, len(data.counts), CHECK_BATCH):
        outs.append(
            session.run(None, {k: v[start : start + CHECK_BATCH] for k, v in feeds.items()})
        )
    return [np.concatenate(parts) for parts in zip(*outs, strict=True)]


def _cells_per_s(run, n_cells: int, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return n_cells / best


def _to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Store the weight matrices as float16, cast back to float32 inside the graph.

    Computing in float16 (onnxruntime's ``convert_float_to_float16``) overflows
    on CPM values (up to 1e6 > 65504) and gains no speed on CPUs; storing the
    weights in float16 halves the file and keeps the arithmetic exact enough.
    """
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    casts = []
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or len(init.dims) < 2:
            continue
        values = onnx.numpy_helper.to_array(init).astype(np.float16)
        name = init.name
        init.CopyFrom(onnx.numpy_helper.from_array(values, name=f"{name}_fp16"))
        casts.append(
            onnx.helper.make_node(
                "Cast", [f"{name}_fp16"], [name], to=onnx.TensorProto.FLOAT, name=f"{name}_cast"
            )
        )
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return out


def _to_int8(proto: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(proto, src)
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        return onnx.load(dst)


def export_model(
    model_dir: str | Path,
    output: str | Path,
    precision: Precision = "fp32",
    opset: int = DEFAULT_OPSET,
    check: str | Path | anndata.AnnData | None = None,
    input_mode: InputMode = "counts",
    force: bool = False,
    measure_speed: bool = False,
) -> ExportReport:
    """Export a trained model directory to an ONNX file carrying its metadata.

    The fp32 graph is always compared with the torch model on the check cells
    (``check``, else synthetic counts): any probability off by more than 1e-5,
    embedding off by more than 1e-4, or changed prediction refuses the export.
    fp16 and int8 files are written only when their predictions agree with fp32
    on at least 99.5 % of the check cells, unless ``force``.

    Parameters
    ----------
    model_dir
        A scNym model directory (ours or scNym 0.3.2's).
    output
        Path of the ``.onnx`` file.
    precision
        ``'fp32'``, ``'fp16'`` or ``'int8'`` (dynamic quantisation of the weights).
    opset
        ONNX opset.
    check
        An h5ad path or AnnData of real cells for the parity check.
    input_mode
        ``'counts'`` (raw counts + total counts; normalisation inside the graph)
        or ``'log1p_cpm'``.
    force
        Write an fp16/int8 file even below the agreement threshold (with a warning).
    measure_speed
        Also time onnxruntime and torch on the check cells (``report.onnx_cells_per_s``,
        ``report.torch_cells_per_s``; NaN otherwise).

    Returns
    -------
    An :class:`ExportReport` with the measured parity, agreement, size and speed.

    Raises
    ------
    ParityError
        If the exported graph does not reproduce torch (nothing is written).
    """
    if precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"precision must be fp32, fp16 or int8, not {precision!r}")
    bundle = load_model_dir(model_dir)
    target_sum = float(bundle.manifest.get("preprocessing", {}).get("target_sum", TARGET_SUM))
    graph = ScnymGraph(bundle.model, input_mode, target_sum, bundle.temperature, bundle.novelty)
    proto = to_onnx(graph, opset)
    onnx.checker.check_model(proto)
    data = _check_data(bundle, check)
    report = ExportReport(
        path=None,
        precision=precision,
        input_mode=input_mode,
        check_source=data.source,
        n_check_cells=len(data.counts),
    )
    fp32 = _check_parity(graph, proto, data, report, model_dir)
    final = proto
    if precision != "fp32":
        final = _to_fp16(proto) if precision == "fp16" else _to_int8(proto)
        _check_agreement(final, graph, data, fp32, report, force)
    else:
        report.argmax_agreement_fp32 = 1.0

    attach_metadata(final, build_metadata(bundle, input_mode, precision, opset))
    model_bytes = final.SerializeToString()
    write_atomically(Path(output), model_bytes)
    report.path = Path(output)
    report.size_bytes = len(model_bytes)
    if measure_speed:
        _measure_speed(report, graph, model_bytes, data)
    logger.info("exported %s: %s", output, report)
    return report


def _check_data(bundle: ModelBundle, check: str | Path | anndata.AnnData | None) -> CheckData:
    """The cells of the parity check: ``check``'s, else synthetic counts."""
    if check is None:
        return synthetic_check_data(bundle)
    if isinstance(check, anndata.AnnData):
        return check_data_from_adata(bundle, check, "check AnnData")
    return check_data_from_adata(bundle, anndata.read_h5ad(check), str(check))


def _check_parity(
    graph: ScnymGraph, proto: onnx.ModelProto, data: CheckData, report: ExportReport, model_dir
) -> list[np.ndarray]:
    """Compare the fp32 graph with torch; returns its outputs.

    Raises
    ------
    ParityError
        If a probability, an embedding value or a prediction differs beyond the tolerances.
    """
    reference = _torch_outputs(graph, data)
    fp32 = _onnx_outputs(proto.SerializeToString(), data, graph)
    report.max_prob_diff = float(np.abs(fp32[0] - reference[0]).max())
    report.max_embed_diff = float(np.abs(fp32[1] - reference[1]).max())
    report.argmax_agreement_torch = float(np.mean(fp32[2] == reference[2]))
    failures = []
    if report.max_prob_diff > PROB_TOLERANCE:
        failures.append(f"max |d probability| {report.max_prob_diff:.2e} > {PROB_TOLERANCE}")
    if report.max_embed_diff > EMBED_TOLERANCE:
        failures.append(f"max |d embedding| {report.max_embed_diff:.2e} > {EMBED_TOLERANCE}")
    if len(reference) > 3:
        scale = np.maximum(np.abs(reference[3]), 1.0)
        report.max_novelty_diff = float((np.abs(fp32[3] - reference[3]) / scale).max())
        if report.max_novelty_diff > NOVELTY_TOLERANCE:
            failures.append(
                f"max relative |d novelty| {report.max_novelty_diff:.2e} > {NOVELTY_TOLERANCE}"
            )
    if report.argmax_agreement_torch < 1.0:
        failures.append(f"argmax agreement {report.argmax_agreement_torch:.4%} < 100 %")
    if failures:
        raise ParityError(
            f"ONNX export of {model_dir} does not match torch on {data.source} cells: "
            + "; ".join(failures)
            + ". Nothing was written."
        )
    return fp32


def _check_agreement(
    variant: onnx.ModelProto,
    graph: ScnymGraph,
    data: CheckData,
    fp32: list[np.ndarray],
    report: ExportReport,
    force: bool,
) -> None:
    """Require an fp16/int8 variant to predict as fp32 does on ``MIN_AGREEMENT`` of the cells.

    Raises
    ------
    ParityError
        Below the agreement, unless ``force`` (then a warning).
    """
    outputs = _onnx_outputs(variant.SerializeToString(), data, graph)
    report.argmax_agreement_fp32 = float(np.mean(outputs[2] == fp32[2]))
    if report.argmax_agreement_fp32 >= MIN_AGREEMENT:
        return
    message = (
        f"{report.precision} predictions agree with fp32 on {report.argmax_agreement_fp32:.2%} "
        f"of {data.source} cells (< {MIN_AGREEMENT:.1%})"
    )
    if not force:
        raise ParityError(message + ". Nothing was written (use force to override).")
    warnings.warn(message + "; written anyway because force was given", stacklevel=3)
    report.notes.append(message)


def _measure_speed(
    report: ExportReport, graph: ScnymGraph, model_bytes: bytes, data: CheckData
) -> None:
    """Best-of-3 cells/s of onnxruntime and torch on the check cells, into ``report``."""
    feeds = data.feeds(graph.input_mode, graph.target_sum)
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    report.onnx_cells_per_s = _cells_per_s(lambda: session.run(None, feeds), len(data.counts))
    tensors = [torch.from_numpy(v) for v in feeds.values()]
    graph.eval()
    with torch.no_grad():
        report.torch_cells_per_s = _cells_per_s(lambda: graph(*tensors), len(data.counts))
