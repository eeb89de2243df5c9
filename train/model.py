"""Neural network modules: the cell type classifier and its domain adversary.

These are plain :class:`torch.nn.Module` objects that know nothing of AnnData.
"""

from __future__ import annotations

import torch
from scnym.infer.preprocessing import TARGET_SUM
from torch import nn

#: Counts per cell that the original scNym normalises to (log1p(CPM)); one value for all parts.
CPM_TARGET = TARGET_SUM


class ResBlock(nn.Module):
    """Residual block: ``relu(x + norm(linear(relu(norm(linear(x))))))``.

    Parameters
    ----------
    n_inputs
        Width of the input (and output).
    n_hidden
        Width of the inner layer.
    """

    def __init__(self, n_inputs: int, n_hidden: int) -> None:
        super().__init__()
        self.linear00 = nn.Linear(n_inputs, n_hidden)
        self.norm00 = nn.BatchNorm1d(n_hidden)
        self.relu00 = nn.ReLU(inplace=True)
        self.linear01 = nn.Linear(n_hidden, n_inputs)
        self.norm01 = nn.BatchNorm1d(n_inputs)
        self.relu01 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu00(self.norm00(self.linear00(x)))
        out = self.norm01(self.linear01(out))
        return self.relu01(out + x)


class CellTypeCLF(nn.Module):
    """Multilayer perceptron classifying cells from log1p(CPM) expression.

    The layout of ``classif`` follows scNym 0.3.2 (``Linear -> BatchNorm ->
    Dropout -> ReLU`` blocks, then a linear head), so that its state dict keys are
    the same. Unlike 0.3.2, the ``n_layers`` hidden layers have weights of their
    own: the original list-multiplied one layer, sharing its weights (see
    :func:`scnym.modeldir` for how such weights load).

    Parameters
    ----------
    n_genes
        Number of input genes.
    n_cell_types
        Number of output classes.
    n_hidden
        Width of the hidden layers (and of the embedding).
    n_layers
        Number of hidden layers after the input layer.
    init_dropout
        Dropout applied to the counts during training (input is
        renormalised to log1p(CPM) afterwards).
    residual
        Use :class:`ResBlock` hidden layers.
    batch_norm
        Batch normalisation in the hidden layers (the input layer always has it).
    track_running_stats
        Passed to :class:`torch.nn.BatchNorm1d`.
    """

    def __init__(
        self,
        n_genes: int,
        n_cell_types: int,
        n_hidden: int = 256,
        n_layers: int = 2,
        init_dropout: float = 0.0,
        residual: bool = False,
        batch_norm: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        self.n_genes = n_genes
        self.n_cell_types = n_cell_types
        self.n_hidden = n_hidden
        self.n_layers = n_layers
        self.init_dropout = nn.Dropout(p=init_dropout)
        layers: list[nn.Module] = [
            nn.Linear(n_genes, n_hidden),
            nn.BatchNorm1d(n_hidden, track_running_stats=track_running_stats),
            nn.Dropout(),
            nn.ReLU(inplace=True),
        ]
        for _ in range(n_layers):
            hidden: list[nn.Module] = [
                ResBlock(n_hidden, n_hidden) if residual else nn.Linear(n_hidden, n_hidden)
            ]
            if batch_norm:
                hidden.append(nn.BatchNorm1d(n_hidden, track_running_stats=track_running_stats))
            hidden += [nn.Dropout(), nn.ReLU(inplace=True)]
            layers += hidden
        layers.append(nn.Linear(n_hidden, n_cell_types))
        self.classif = nn.Sequential(*layers)

    def _drop_input(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.init_dropout.p == 0:
            return x
        counts = self.init_dropout(torch.expm1(x))
        counts = counts / counts.sum(dim=1, keepdim=True).clamp_min(1e-8) * CPM_TARGET
        return torch.log1p(counts)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Return the penultimate activations (``obsm['X_scnym']``)."""
        return self.classif[:-1](self._drop_input(x))

    def forward(self, x: torch.Tensor, return_embed: bool = False):
        """Return class logits (and the embedding if ``return_embed``)."""
        embedding = self.embed(x)
        logits = self.classif[-1](embedding)
        return (logits, embedding) if return_embed else logits


class CellTypeCLFConditional(CellTypeCLF):
    """:class:`CellTypeCLF` conditioned on a one-hot covariate (e.g. tissue).

    The input is ``[genes, one-hot covariate]``; input dropout touches the genes only.

    Parameters
    ----------
    n_genes
        Number of genes.
    n_tissues
        Number of covariate categories appended to the genes.
    **kwargs
        Passed to :class:`CellTypeCLF`.
    """

    def __init__(self, n_genes: int, n_tissues: int, **kwargs) -> None:
        n_cell_types = kwargs.pop("n_cell_types")
        super().__init__(n_genes=n_genes + n_tissues, n_cell_types=n_cell_types, **kwargs)
        self.n_tissues = n_tissues
        self.n_genes_only = n_genes

    def _drop_input(self, x: torch.Tensor) -> torch.Tensor:
        genes, covariate = x[:, : self.n_genes_only], x[:, self.n_genes_only :]
        return torch.cat([super()._drop_input(genes), covariate], dim=1)


class GradReverse(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``-weight`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        return x.view_as(x) * 1.0

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return -ctx.weight * grad_output, None


class DANN(nn.Module):
    """Domain adversary on the classifier's embedding, through gradient reversal.

    Parameters
    ----------
    model
        The classifier; its embedding layers are shared, not copied.
    n_domains
        Number of domains to discriminate.
    weight
        Scale of the reversed gradient reaching the embedding.
    n_layers
        Number of hidden layers in the domain classifier.
    """

    def __init__(
        self, model: CellTypeCLF, n_domains: int = 2, weight: float = 1.0, n_layers: int = 1
    ) -> None:
        super().__init__()
        self.model = model
        self.n_domains = n_domains
        self.weight = weight
        width = model.n_hidden
        head: list[nn.Module] = []
        for _ in range(n_layers):
            head += [nn.Linear(width, width), nn.ReLU()]
        head.append(nn.Linear(width, n_domains))
        self.domain_clf = nn.Sequential(*head)

    def set_rev_grad_weight(self, weight: float) -> None:
        """Set the scale of the reversed gradient."""
        self.weight = float(weight)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(domain_logits, embedding)`` for log1p(CPM) input ``x``."""
        x_embed = self.model.classif[:-1](x)
        reversed_embed = GradReverse.apply(x_embed, self.weight)
        return self.domain_clf(reversed_embed), x_embed
