"""Gene attributions for a trained classifier: saliency and integrated gradients.

:class:`Salience` and :class:`IntegratedGradient` attribute a class to the genes of
cells given as log1p(CPM) arrays in the model's gene order. :func:`rank_genes`
is the workflow on an AnnData: which genes made the model call each group's
type, ranked per group (as a table and in scanpy's ``rank_genes_groups``
structure); its torch-free steps are in :mod:`scnym.explain`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import torch
from scnym.infer.contract import DEFAULT_MIN_GENE_OVERLAP
from scnym.infer.model import OnnxModel
from torch import nn

from .explain import (
    DEFAULT_EXPLAIN_KEY,
    METHODS,
    completeness_holds,
    explain_groups,
    warn_incomplete,
)
from .modeldir import ModelBundle, load_model_dir
from .onnx_attribution import OnnxAttribution
from .prediction import onnx_file, predict_arrays

logger = logging.getLogger(__name__)

#: Rows of interpolated inputs per forward/backward pass of integrated gradients.
PATH_BATCH_ROWS = 4096


def _as_tensor(x, device: torch.device) -> torch.Tensor:
    if hasattr(x, "toarray"):
        x = x.toarray()
    tensor = torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)
    return tensor.unsqueeze(0) if tensor.dim() == 1 else tensor


class _GuidedReLU(torch.autograd.Function):
    """ReLU whose backward pass keeps only positive gradients at active units."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad_output.clamp_min(0) * (x > 0).to(grad_output.dtype)


@contextlib.contextmanager
def _guided_relus(model: nn.Module) -> Iterator[None]:
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    for relu in relus:
        relu.forward = _GuidedReLU.apply
    try:
        yield
    finally:
        for relu in relus:
            del relu.forward


class _Attribution:
    def __init__(
        self,
        model: nn.Module,
        class_names: Sequence[str],
        gene_names: Sequence[str] | None = None,
        verbose: bool = False,
    ) -> None:
        self.model = copy.deepcopy(model).eval()
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.device = next(self.model.parameters()).device
        self.class_names = np.asarray(class_names)
        self.gene_names = None if gene_names is None else np.asarray(gene_names)
        self.verbose = verbose

    def _class_index(self, target_class: str | int) -> int:
        if isinstance(target_class, int | np.integer):
            return int(target_class)
        matches = np.flatnonzero(self.class_names == target_class)
        if len(matches) == 0:
            raise ValueError(
                f"{target_class!r} is not a class; classes: {self.class_names.tolist()}"
            )
        return int(matches[0])

    def _rank(self, scores: np.ndarray) -> np.ndarray:
        if self.gene_names is None:
            raise ValueError("gene_names were not given: cannot rank genes")
        return self.gene_names[np.argsort(scores)[::-1]]


class Salience(_Attribution):
    """Gradient of a class score with respect to the input genes.

    Parameters
    ----------
    model
        A trained classifier.
    class_names
        Class names in output order.
    gene_names
        Gene names in input order (needed for ranking).
    """

    def get_saliency(self, x, target_class: str | int, guide_backprop: bool = False) -> np.ndarray:
        """Return ``d logit[target] / d x`` for each cell ``[cells, genes]``.

        Parameters
        ----------
        x
            log1p(CPM) expression ``[cells, genes]`` or ``[genes]``.
        target_class
            Class name or index.
        guide_backprop
            Guided backpropagation: only positive gradients flow back through ReLUs.
        """
        index = self._class_index(target_class)
        inputs = _as_tensor(x, self.device).requires_grad_(True)
        guard = _guided_relus(self.model) if guide_backprop else contextlib.nullcontext()
        with guard:
            logits = self.model(inputs)
            logits[:, index].sum().backward()
        return inputs.grad.detach().cpu().numpy()

    def rank_genes_by_saliency(self, x, target_class: str | int, **kwargs) -> np.ndarray:
        """Gene names ordered by mean saliency over the cells of ``x``, highest first."""
        saliency = self.get_saliency(x, target_class, **kwargs)
        return self._rank(saliency.mean(axis=0))


class IntegratedGradient(_Attribution):
    """Integrated gradients of a class probability (Sundararajan et al. 2017).

    The attributions of a cell sum to the change in the class probability between
    the baseline (zero expression by default) and the cell; the midpoint Riemann
    sum of ``M`` steps approximates this, checked by
    :func:`scnym.explain.completeness_holds`.
    """

    def get_grad(self, x, target_class: str | int) -> np.ndarray:
        """Gradient of the softmax probability of ``target_class`` w.r.t. the input."""
        index = self._class_index(target_class)
        inputs = _as_tensor(x, self.device).requires_grad_(True)
        torch.softmax(self.model(inputs), dim=1)[:, index].sum().backward()
        return inputs.grad.detach().cpu().numpy()

    def integrate(
        self, x, target_class: str | int, M: int = 300, baseline=None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Integrated gradients ``[cells, genes]`` and each cell's change in probability.

        Several cells' paths run in one batch of at most :data:`PATH_BATCH_ROWS` rows
        (the batch norms are in eval mode: rows do not interact).

        Parameters
        ----------
        x
            log1p(CPM) expression ``[cells, genes]`` or ``[genes]``.
        target_class
            Class name or index.
        M
            Number of steps of the Riemann sum.
        baseline
            Reference input ``[genes]`` (zeros by default).

        Returns
        -------
        The attributions, and ``p(cell) - p(baseline)`` of the class for each cell:
        by completeness, the attributions of a cell should sum to it.
        """
        index = self._class_index(target_class)
        cells = _as_tensor(x, self.device)
        base = (
            torch.zeros_like(cells[:1]) if baseline is None else _as_tensor(baseline, self.device)
        )
        # Midpoint rule: its error falls as 1/M^2 (the right Riemann sum's as 1/M).
        steps = torch.arange(M, device=self.device, dtype=cells.dtype)
        alphas = ((steps + 0.5) / M)[None, :, None]
        per_batch = max(1, PATH_BATCH_ROWS // M)
        attributions = []
        for start in range(0, len(cells), per_batch):
            diff = cells[start : start + per_batch] - base
            path = (base + alphas * diff[:, None, :]).reshape(-1, cells.shape[1])
            path.requires_grad_(True)
            torch.softmax(self.model(path), dim=1)[:, index].sum().backward()
            mean_grad = path.grad.reshape(len(diff), M, -1).mean(dim=1)
            attributions.append((diff * mean_grad).detach().cpu().numpy())
        with torch.no_grad():
            ends = torch.softmax(self.model(torch.cat([base, cells])), dim=1)[:, index]
        return np.concatenate(attributions), (ends[1:] - ends[0]).cpu().numpy()

    def get_integrated_gradient(
        self, x, target_class: str | int, M: int = 300, baseline=None
    ) -> np.ndarray:
        """Integrated gradients ``[cells, genes]`` along the straight path from ``baseline``.

        Parameters as :meth:`integrate`. Logs a warning when the attributions of some
        cells do not sum to their change in probability
        (:func:`scnym.explain.completeness_holds`).
        """
        attributions, deltas = self.integrate(x, target_class, M=M, baseline=baseline)
        warn_incomplete(completeness_holds(attributions, deltas), M)
        return attributions

    def rank_genes(self, x, target_class: str | int, **kwargs) -> np.ndarray:
        """Gene names ordered by mean integrated gradient over the cells of ``x``."""
        return self._rank(self.get_integrated_gradient(x, target_class, **kwargs).mean(axis=0))


#: Riemann steps of integrated gradients in :func:`rank_genes`.
DEFAULT_IG_STEPS = 100


class TorchAttribution:
    """The attribution methods of a model directory, on log1p(CPM) rows in its gene order.

    ``saliency`` and ``guided``: gradient of the class logit (:class:`Salience`);
    ``integrated_gradients``: of the class probability, from zero expression
    (:class:`IntegratedGradient`), with each cell's completeness.
    """

    #: The output each method attributes.
    outputs = {"saliency": "logit", "guided": "logit", "integrated_gradients": "probability"}

    def __init__(self, bundle: ModelBundle, n_steps: int = DEFAULT_IG_STEPS) -> None:
        self.bundle = bundle
        self.gene_names = list(bundle.gene_names)
        self.class_names = list(bundle.class_names)
        self.n_steps = n_steps
        self.salience = Salience(bundle.model, self.class_names, self.gene_names)
        self.integrated = IntegratedGradient(bundle.model, self.class_names, self.gene_names)

    def probabilities(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities of the rows."""
        return predict_arrays(self.bundle, X)[0]

    def attribute(self, X: np.ndarray, index: int, method: str) -> tuple[np.ndarray, np.ndarray]:
        """Attributions ``[cells, genes]`` toward class ``index``, and whether each cell's
        completeness holds (always True but for integrated gradients)."""
        if method == "integrated_gradients":
            attributions, deltas = self.integrated.integrate(X, index, M=self.n_steps)
            return attributions, completeness_holds(attributions, deltas)
        saliency = self.salience.get_saliency(X, index, guide_backprop=method == "guided")
        return saliency, np.ones(len(X), dtype=bool)


def load_attribution(
    trained_model: str | os.PathLike | ModelBundle | OnnxModel,
    method: str = "saliency",
    n_steps: int = DEFAULT_IG_STEPS,
) -> TorchAttribution | OnnxAttribution:
    """The attribution methods of a model directory (torch) or an ONNX file / registry name.

    Raises
    ------
    FileNotFoundError
        When ``trained_model`` is neither a model directory, an ONNX file nor a
        registry model.
    NotImplementedError
        For an ONNX model and a method other than ``saliency``.
    """
    if isinstance(trained_model, ModelBundle):
        return TorchAttribution(trained_model, n_steps)
    if not isinstance(trained_model, OnnxModel) and Path(trained_model).is_dir():
        return TorchAttribution(load_model_dir(trained_model), n_steps)
    OnnxAttribution.check_method(method)
    if isinstance(trained_model, OnnxModel):
        return OnnxAttribution(trained_model)
    path = onnx_file(str(trained_model))
    if path is None:
        raise FileNotFoundError(
            f"{trained_model}: not a model directory, an ONNX file or a registry model "
            "(scnym models list)"
        )
    logger.info("%s is an ONNX model: saliency by finite differences of the log-odds", path)
    return OnnxAttribution(OnnxModel(path))


def rank_genes(
    adata: anndata.AnnData,
    trained_model: str | os.PathLike | ModelBundle | OnnxModel,
    groupby: str,
    method: str = "saliency",
    n_genes: int = 50,
    cells_per_group: int = 100,
    seed: int = 0,
    key_added: str = DEFAULT_EXPLAIN_KEY,
    layer: str | None = None,
    n_steps: int = DEFAULT_IG_STEPS,
    min_gene_overlap: float = DEFAULT_MIN_GENE_OVERLAP,
    progress: bool = True,
) -> pd.DataFrame:
    """Which genes made the model call each group's type: genes ranked per group.

    For each group of ``obs[groupby]``, up to ``cells_per_group`` of its cells
    (drawn with ``seed``) are attributed toward the group's class and the
    attributions averaged per gene. A group named like a model class is explained
    toward that class, any other group (e.g. clusters) toward the class the model
    predicts most often among its sampled cells. The input is prepared as
    prediction prepares it (:func:`scnym.explain.model_inputs`); genes the data
    lacks are not ranked.

    Parameters
    ----------
    adata
        Raw counts or log1p(CPM) (in ``X`` or ``layer``). The ranking is written to
        ``uns[key_added]`` in scanpy's ``rank_genes_groups`` structure
        (``sc.get.rank_genes_groups_df``, ``sc.pl.rank_genes_groups_dotplot``).
    trained_model
        A model directory (or a loaded :class:`~scnym.modeldir.ModelBundle`), an
        ONNX file or a registry model name. ONNX models support ``saliency`` only,
        by finite differences of the class log-odds through onnxruntime
        (:class:`scnym.explain.OnnxAttribution`).
    groupby
        obs column of the groups. ``'scNym'`` when absent is predicted first.
    method
        ``'saliency'`` (gradient of the class logit), ``'guided'`` (the same by
        guided backpropagation) or ``'integrated_gradients'`` (of the class
        probability from zero expression; completeness is checked and a warning
        logged for cells where it fails).
    n_genes
        Genes kept per group.
    cells_per_group, seed
        Cells sampled per group, and the seed of the sampling.
    key_added
        ``uns`` key of the result.
    layer
        Read this layer instead of ``X`` (``'raw'``: ``adata.raw``).
    n_steps
        Riemann steps of integrated gradients.
    min_gene_overlap
        Least fraction of the model's genes the data must hold.
    progress
        Show a progress bar.

    Returns
    -------
    One row a group and rank: ``group, rank, gene, score`` (rank 1 = strongest).

    Raises
    ------
    ValueError
        For an unknown method, groupby column or layer, or data the model cannot read.
    NotImplementedError
        For ``guided`` and ``integrated_gradients`` with an ONNX model.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    attribution = load_attribution(trained_model, method, n_steps)
    table, result = explain_groups(
        adata, attribution, groupby, method=method, n_genes=n_genes, seed=seed,
        cells_per_group=cells_per_group, layer=layer, min_gene_overlap=min_gene_overlap,
        progress=progress,
    )  # fmt: skip
    result["params"]["model"] = str(getattr(trained_model, "path", trained_model))
    adata.uns[key_added] = result
    return table
