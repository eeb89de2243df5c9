"""Shared fixtures for the training package tests: seeding and tiny synthetic data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

# The test tensors are tiny: intra-op threads only add synchronisation cost, which
# becomes severe (100x) when another process competes for the CPU cores.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_everything():
    """Seed torch and numpy's global state before every test."""
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002  (legacy global state, for code that still uses it)
    yield


def _toy_counts(
    n_cells: int = 60, n_genes: int = 12, n_classes: int = 3, seed: int = 0, boost: float = 20.0
) -> tuple[np.ndarray, np.ndarray]:
    """Poisson counts where gene ``c`` is a strong marker of class ``c``."""
    rng = np.random.default_rng(seed)
    y = np.arange(n_cells) % n_classes
    rates = rng.gamma(4.0, 5.0, size=n_genes)
    lam = np.tile(rates, (n_cells, 1))
    for c in range(n_classes):
        lam[y == c, c] *= boost
    counts = rng.poisson(lam).astype(np.float32)
    counts[counts.sum(axis=1) == 0, -1] = 1.0
    return counts, y


def _log1p_cpm(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    return np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e6).astype(np.float32)


@pytest.fixture
def toy_counts():
    """Factory of ``(counts, labels)`` with planted marker genes."""
    return _toy_counts


@pytest.fixture
def toy_data():
    """Factory of ``(log1p(CPM) float32 matrix, labels)`` with planted marker genes."""

    def make(**kwargs) -> tuple[np.ndarray, np.ndarray]:
        counts, y = _toy_counts(**kwargs)
        return _log1p_cpm(counts), y

    return make


@pytest.fixture
def lognorm():
    """Row-wise log1p(CPM) of a counts array (float64 reference, float32 result)."""
    return _log1p_cpm
