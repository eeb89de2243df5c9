"""The exported computation: normalisation, classifier and outputs as one torch module."""

from __future__ import annotations

import io
import warnings

import onnx
import torch
from scnym.infer.contract import INPUT_NAMES, NOVELTY_OUTPUT, OUTPUT_NAMES, InputMode
from scnym.model import CellTypeCLF
from scnym.novelty import NoveltyFit, NoveltyScorer
from torch import nn

#: ONNX opset the graph is exported with unless asked otherwise.
DEFAULT_OPSET = 17


class ScnymGraph(nn.Module):
    """Eval-mode classifier with its preprocessing, as exported to ONNX.

    Parameters
    ----------
    model
        The trained classifier.
    input_mode
        ``'counts'``: inputs are the raw counts of the model's genes and each
        cell's total counts over all its genes; CPM scaling and log1p run inside.
        ``'log1p_cpm'``: the input is already log1p(CPM).
    target_sum
        Counts per cell of the CPM scale.
    temperature
        Softmax temperature fitted on held-out cells (:mod:`scnym.calibration`).
    novelty
        The fitted novelty score (:mod:`scnym.novelty`); when given, the graph has a
        fourth output, ``novelty``.
    """

    def __init__(
        self,
        model: CellTypeCLF,
        input_mode: InputMode,
        target_sum: float,
        temperature: float = 1.0,
        novelty: NoveltyFit | None = None,
    ) -> None:
        super().__init__()
        if input_mode not in INPUT_NAMES:
            raise ValueError(f"input_mode must be 'counts' or 'log1p_cpm', not {input_mode!r}")
        self.model = model
        self.input_mode = input_mode
        self.target_sum = float(target_sum)
        self.temperature = float(temperature)
        self.novelty = None if novelty is None else NoveltyScorer(novelty)
        self.eval()

    @property
    def output_names(self) -> list[str]:
        """The graph's outputs, in order."""
        return list(OUTPUT_NAMES) + ([NOVELTY_OUTPUT] if self.novelty is not None else [])

    def forward(self, x: torch.Tensor, total_counts: torch.Tensor | None = None):
        if self.input_mode == "counts":
            scale = self.target_sum / total_counts.clamp_min(1e-12)
            x = torch.log1p(x * scale.unsqueeze(1))
        logits, embedding = self.model(x, return_embed=True)
        outputs = (torch.softmax(logits / self.temperature, dim=1), embedding, logits.argmax(dim=1))
        if self.novelty is None:
            return outputs
        return (*outputs, self.novelty(logits))

    def example_inputs(self, n_cells: int = 2) -> tuple[torch.Tensor, ...]:
        counts = torch.ones(n_cells, self.model.n_genes)
        if self.input_mode == "counts":
            return counts, counts.sum(dim=1)
        return (counts,)


def to_onnx(graph: ScnymGraph, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Trace ``graph`` to an ONNX model with a dynamic batch axis."""
    inputs = list(INPUT_NAMES[graph.input_mode])
    outputs = graph.output_names
    dynamic = {name: {0: "cells"} for name in inputs + outputs}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            graph,
            graph.example_inputs(),
            buffer,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,  # the TorchScript path: small, deterministic graphs for an MLP
        )
    proto = onnx.load_from_string(buffer.getvalue())
    proto.producer_name = "scnym"
    return proto
