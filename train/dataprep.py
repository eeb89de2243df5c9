"""Datasets, batch loaders and augmentations for training.

Augmentations act on a batch: a dict whose ``'input'`` is a float tensor of
log1p(CPM) values ``[cells, genes]``. They compose with :class:`Compose`
(torchvision is not needed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import sparse
from torch.utils.data import Dataset

from .model import CPM_TARGET

Batch = dict[str, torch.Tensor]


def _as_onehot(codes: np.ndarray | None, n: int, width: int) -> np.ndarray:
    """One-hot encode ``codes``; rows are ``-1`` where ``codes`` is None."""
    if codes is None:
        return np.full((n, max(width, 1)), -1.0, dtype=np.float32)
    onehot = np.zeros((n, width), dtype=np.float32)
    onehot[np.arange(n), np.asarray(codes, dtype=np.int64)] = 1.0
    return onehot


class SingleCellDS(Dataset):
    """Map-style dataset of single cells (one dict per cell).

    Kept for compatibility with the original API; training itself uses
    :class:`MatrixLoader`, which slices whole batches from the matrix.

    Parameters
    ----------
    X
        ``[cells, genes]`` dense array or any scipy sparse matrix.
    y
        Integer class codes ``[cells]``.
    domain
        Integer domain codes ``[cells]`` or None.
    transform
        Callable applied to each sample dict.
    num_classes, num_domains
        Widths of the one-hot encodings (``-1``: infer from the codes).
    """

    def __init__(
        self,
        X: np.ndarray | sparse.spmatrix,
        y: np.ndarray,
        domain: np.ndarray | None = None,
        transform: Callable | None = None,
        num_classes: int = -1,
        num_domains: int = -1,
    ) -> None:
        if X.shape[0] != len(y):
            raise ValueError(f"X has {X.shape[0]} cells but y has {len(y)} labels")
        self.X = sparse.csr_matrix(X) if sparse.issparse(X) else np.asarray(X)
        self.y = np.asarray(y)
        self.num_classes = num_classes if num_classes > 0 else int(self.y.max()) + 1
        self.domain = None if domain is None else np.asarray(domain)
        if self.domain is not None:
            self.num_domains = num_domains if num_domains > 0 else int(self.domain.max()) + 1
        else:
            self.num_domains = num_domains
        self.transform = transform

    def __len__(self) -> int:
        return self.X.shape[0]

    def __getitem__(self, idx: int) -> Batch:
        row = self.X[idx]
        row = row.toarray().ravel() if sparse.issparse(row) else np.asarray(row).ravel()
        sample = {
            "input": torch.from_numpy(row.astype(np.float32)),
            "output": torch.from_numpy(_as_onehot(self.y[[idx]], 1, self.num_classes)[0]),
            "domain": torch.from_numpy(
                _as_onehot(
                    None if self.domain is None else self.domain[[idx]], 1, self.num_domains
                )[0]
            ),
        }
        return self.transform(sample) if self.transform is not None else sample


class MatrixLoader:
    """Iterate over batches sliced from a (sparse) matrix, densified per batch.

    Rows are gathered for the whole batch at once (``X[rows]``), never one cell
    at a time, and only the batch is densified.

    Parameters
    ----------
    X
        ``[cells, genes]`` CSR matrix or dense array of log1p(CPM) values.
    rows
        The rows of ``X`` this loader draws from.
    y
        One-hot (or soft) labels ``[cells, classes]`` aligned with ``X``, or None.
    domain
        One-hot domains ``[cells, domains]`` aligned with ``X``, or None.
    batch_size
        Cells per batch; reduced to ``len(rows)`` when there are fewer rows.
    shuffle
        Draw rows in a new random order each pass.
    drop_last
        Drop a final incomplete batch (kept when it is the only one).
    sample_weights
        Sample rows with replacement proportionally to these weights (class
        balancing); one pass then draws ``len(rows)`` rows.
    seed
        Seed of the loader's random generator.
    device
        Device the tensors are moved to.
    """

    def __init__(
        self,
        X: np.ndarray | sparse.csr_matrix,
        rows: np.ndarray,
        y: np.ndarray | None = None,
        domain: np.ndarray | None = None,
        batch_size: int = 256,
        shuffle: bool = True,
        drop_last: bool = True,
        sample_weights: np.ndarray | None = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if len(rows) == 0:
            raise ValueError("MatrixLoader needs at least one row")
        self.X = X
        self.rows = np.asarray(rows, dtype=np.int64)
        self.y = y
        self.domain = domain
        self.batch_size = min(batch_size, len(self.rows))
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.sample_weights = None
        if sample_weights is not None:
            self.sample_weights = np.asarray(sample_weights, dtype=np.float64)
            self.sample_weights /= self.sample_weights.sum()
        self.rng = np.random.default_rng(seed)
        self.device = torch.device(device)

    def __len__(self) -> int:
        n = len(self.rows)
        return max(n // self.batch_size, 1) if self.drop_last else -(-n // self.batch_size)

    def _order(self) -> np.ndarray:
        if self.sample_weights is not None:
            return self.rng.choice(self.rows, size=len(self.rows), p=self.sample_weights)
        return self.rng.permutation(self.rows) if self.shuffle else self.rows

    def batch(self, rows: np.ndarray) -> Batch:
        """Return the batch dict for the given matrix rows."""
        block = self.X[rows]
        dense = block.toarray() if sparse.issparse(block) else np.asarray(block)
        out = {"input": torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32))}
        if self.y is not None:
            out["output"] = torch.from_numpy(self.y[rows])
        if self.domain is not None:
            out["domain"] = torch.from_numpy(self.domain[rows])
        return {k: v.to(self.device, non_blocking=True) for k, v in out.items()}

    def __iter__(self) -> Iterator[Batch]:
        order = self._order()
        for i in range(len(self)):
            yield self.batch(order[i * self.batch_size : (i + 1) * self.batch_size])


def repeater(loader: MatrixLoader) -> Iterator[Batch]:
    """Cycle over ``loader`` forever (new order each pass)."""
    while True:
        yield from loader


def balance_classes(y: np.ndarray, class_min: int = 256, seed: int | None = None) -> np.ndarray:
    """Indices resampling every class to ``max(smallest class, class_min)`` cells (as scNym 0.3.2).

    Parameters
    ----------
    y
        Integer class codes.
    class_min
        Minimum number of cells drawn per class.
    seed
        Seed for the resampling.

    Returns
    -------
    Indices into ``y``; classes smaller than the target are drawn with replacement.
    """
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    target = max(int(counts.min()), class_min)
    picks = []
    for cls, count in zip(classes, counts, strict=True):
        members = np.flatnonzero(y == cls)
        picks.append(rng.choice(members, size=target, replace=count < target))
    return np.concatenate(picks)


def class_balance_weights(y: np.ndarray) -> np.ndarray:
    """Per-sample weights giving every class the same total weight."""
    _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse]


# ----------------------------------------------------------------------------
# Augmentations: callables on batch dicts, returning the dict.
# ----------------------------------------------------------------------------


def _row_normalize(counts: torch.Tensor, target: float) -> torch.Tensor:
    return counts / counts.sum(dim=-1, keepdim=True).clamp_min(1e-8) * target


class LibrarySizeNormalize:
    """Scale each cell to ``counts_per_cell_after`` total counts, then log1p."""

    def __init__(self, counts_per_cell_after: float = CPM_TARGET, log1p: bool = True) -> None:
        self.counts_per_cell_after = counts_per_cell_after
        self.log1p = log1p

    def __call__(self, sample: Batch) -> Batch:
        x = _row_normalize(sample["input"], self.counts_per_cell_after)
        sample["input"] = torch.log1p(x) if self.log1p else x
        return sample


class ExpMinusOne:
    """Undo log1p: ``expm1`` of the input."""

    def __call__(self, sample: Batch) -> Batch:
        sample["input"] = torch.expm1(sample["input"])
        return sample


class MultinomialSample:
    """Resample each cell's counts from a multinomial at a random depth.

    Parameters
    ----------
    depth
        ``(low, high)`` range of the sampled library size.
    depth_ratio
        If given, ``(low, high)`` range of the ratio to each cell's own depth.
    """

    def __init__(
        self,
        depth: tuple[int, int] = (10000, 100000),
        depth_ratio: tuple[float, float] | None = None,
    ) -> None:
        self.depth = depth
        self.depth_ratio = depth_ratio

    def __call__(self, sample: Batch) -> Batch:
        x = sample["input"]
        rows = x.unsqueeze(0) if x.dim() == 1 else x
        size = rows.sum(dim=-1)
        if self.depth_ratio is not None:
            ratio = torch.empty_like(size).uniform_(*self.depth_ratio)
            depth = (size * ratio).round().long().clamp_min(1)
        else:
            depth = torch.randint(self.depth[0], self.depth[1], size.shape, device=x.device)
        probs = rows.clamp_min(0) / rows.sum(dim=-1, keepdim=True).clamp_min(1e-8)
        # A Poisson draw at the target depth is the multinomial conditioned on its total.
        draws = torch.poisson(probs * depth.unsqueeze(-1).to(probs.dtype))
        sample["input"] = draws.reshape(x.shape)
        return sample


class GeneMasking:
    """Zero a random ``p_drop`` fraction of genes in each cell, for a ``p_apply`` share of batches.

    Parameters
    ----------
    p_drop
        Fraction of genes zeroed in each cell (or the upper bound if ``sample_p_drop``).
    p_apply
        Probability of applying the mask to a batch.
    sample_p_drop
        Draw the fraction uniformly in ``[0, p_drop]`` per batch.
    """

    def __init__(self, p_drop: float = 0.1, p_apply: float = 0.5, sample_p_drop: bool = False):
        self.p_drop = p_drop
        self.p_apply = p_apply
        self.sample_p_drop = sample_p_drop

    def __call__(self, sample: Batch) -> Batch:
        if torch.rand(()) >= self.p_apply:
            return sample
        x = sample["input"]
        p = float(torch.rand(())) * self.p_drop if self.sample_p_drop else self.p_drop
        n_genes = x.shape[-1]
        n_mask = int(np.floor(n_genes * p))
        if n_mask == 0:
            return sample
        # The n_mask smallest of one random key per gene give a uniform random subset per cell.
        keys = torch.rand(x.shape, device=x.device)
        masked = keys.topk(n_mask, dim=-1, largest=False).indices
        sample["input"] = x.scatter(-1, masked, 0.0)
        return sample


class InputDropout:
    """Zero each entry with probability ``p_drop`` (surviving entries scaled by 1/(1-p))."""

    def __init__(self, p_drop: float = 0.1) -> None:
        self.p_drop = p_drop

    def __call__(self, sample: Batch) -> Batch:
        sample["input"] = F.dropout(sample["input"], p=self.p_drop, training=True)
        return sample


class PoissonSample:
    """Draw counts from ``Poisson(x * r)`` with ``r ~ U(depth_range)`` per cell."""

    def __init__(self, depth_range: tuple[float, float] = (0.5, 2.0)) -> None:
        self.depth_range = depth_range

    def __call__(self, sample: Batch) -> Batch:
        x = sample["input"]
        shape = (*x.shape[:-1], 1)
        r = torch.empty(shape, device=x.device, dtype=x.dtype).uniform_(*self.depth_range)
        sample["input"] = torch.poisson(x.clamp_min(0) * r)
        return sample


def identity(sample: Batch) -> Batch:
    """Return the sample unchanged."""
    return sample


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[Batch], Batch]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Batch) -> Batch:
        for transform in self.transforms:
            sample = transform(sample)
        return sample


def mixup(a: torch.Tensor, b: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Interpolate ``gamma * a + (1 - gamma) * b`` (``gamma`` broadcast per row)."""
    return gamma * a + (1 - gamma) * b


class SampleMixUp:
    """MixUp within a batch: every tensor of the dict is mixed with a permutation of itself.

    Parameters
    ----------
    alpha
        Parameter of the ``Beta(alpha, alpha)`` mixing weights; 0 disables mixing.
    keep_dominant_obs
        Use ``max(gamma, 1 - gamma)`` so each row stays closest to itself.
    """

    def __init__(self, alpha: float = 0.2, keep_dominant_obs: bool = False) -> None:
        self.alpha = alpha
        self.keep_dominant_obs = keep_dominant_obs

    def sample_gamma(self, n: int, device: torch.device) -> torch.Tensor:
        """Draw per-row mixing weights ``[n, 1]``."""
        beta = torch.distributions.Beta(torch.tensor(self.alpha), torch.tensor(self.alpha))
        gamma = beta.sample((n, 1)).to(device)
        return torch.maximum(gamma, 1 - gamma) if self.keep_dominant_obs else gamma

    def __call__(self, sample: Batch) -> Batch:
        if self.alpha == 0:
            return sample
        x = sample["input"]
        perm = torch.randperm(x.shape[0], device=x.device)
        gamma = self.sample_gamma(x.shape[0], x.device)
        mixed = {
            key: mixup(value, value[perm], gamma.to(value.dtype))
            if torch.is_tensor(value) and value.is_floating_point() and value.dim() == 2
            else value
            for key, value in sample.items()
        }
        mixed["random_idx"] = perm
        return mixed


AUGMENTATION_SCHEMES: dict[str, Callable[[Batch], Batch]] = {
    "log1p_drop": Compose([ExpMinusOne(), InputDropout(p_drop=0.1), LibrarySizeNormalize()]),
    "log1p_mask": Compose(
        [ExpMinusOne(), GeneMasking(p_drop=0.1, p_apply=0.5), LibrarySizeNormalize()]
    ),
    "log1p_poisson": Compose([ExpMinusOne(), PoissonSample(), LibrarySizeNormalize()]),
    "log1p_poisson_drop": Compose(
        [
            ExpMinusOne(),
            PoissonSample(depth_range=(0.1, 2.0)),
            InputDropout(p_drop=0.1),
            LibrarySizeNormalize(),
        ]
    ),
    "None": identity,
    "none": identity,
}


def get_augmentation(name: str | None) -> Callable[[Batch], Batch]:
    """Return the augmentation scheme ``name`` (None means no augmentation)."""
    if name is None:
        return identity
    if name not in AUGMENTATION_SCHEMES:
        raise ValueError(
            f"Unknown augmentation {name!r}; choose one of {sorted(AUGMENTATION_SCHEMES)}"
        )
    return AUGMENTATION_SCHEMES[name]
