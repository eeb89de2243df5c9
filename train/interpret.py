"""Gene attributions for a trained classifier: saliency and integrated gradients."""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

#: Relative tolerance of the integrated gradients completeness check.
COMPLETENESS_TOLERANCE = 0.1


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
    the baseline (zero expression by default) and the cell.
    """

    def get_grad(self, x, target_class: str | int) -> np.ndarray:
        """Gradient of the softmax probability of ``target_class`` w.r.t. the input."""
        index = self._class_index(target_class)
        inputs = _as_tensor(x, self.device).requires_grad_(True)
        torch.softmax(self.model(inputs), dim=1)[:, index].sum().backward()
        return inputs.grad.detach().cpu().numpy()

    def get_integrated_gradient(
        self, x, target_class: str | int, M: int = 300, baseline=None
    ) -> np.ndarray:
        """Integrated gradients ``[cells, genes]`` along the straight path from ``baseline``.

        Parameters
        ----------
        x
            log1p(CPM) expression ``[cells, genes]`` or ``[genes]``.
        target_class
            Class name or index.
        M
            Number of steps of the Riemann sum.
        baseline
            Reference input (zeros by default).
        """
        index = self._class_index(target_class)
        cells = _as_tensor(x, self.device)
        base = (
            torch.zeros_like(cells[:1]) if baseline is None else _as_tensor(baseline, self.device)
        )
        alphas = (torch.arange(1, M + 1, device=self.device, dtype=cells.dtype) / M)[:, None]
        attributions = []
        for cell in cells:
            path = (base + alphas * (cell - base)).requires_grad_(True)
            probs = torch.softmax(self.model(path), dim=1)[:, index]
            probs.sum().backward()
            ig = (cell - base)[0] * path.grad.mean(dim=0)
            self._check_integration(ig, cell, base, index)
            attributions.append(ig.detach().cpu().numpy())
        return np.stack(attributions)

    @torch.no_grad()
    def _check_integration(self, ig, cell, base, index) -> None:
        ends = torch.softmax(self.model(torch.stack([base[0], cell])), dim=1)[:, index]
        delta = float(ends[1] - ends[0])
        total = float(ig.sum())
        if abs(total - delta) > COMPLETENESS_TOLERANCE * max(abs(delta), 1e-6):
            logger.warning(
                "Integrated gradients sum to %.4f but the probability changes by %.4f; "
                "increase M for a closer approximation",
                total,
                delta,
            )

    def rank_genes(self, x, target_class: str | int, **kwargs) -> np.ndarray:
        """Gene names ordered by mean integrated gradient over the cells of ``x``."""
        return self._rank(self.get_integrated_gradient(x, target_class, **kwargs).mean(axis=0))
