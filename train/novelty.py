"""Novelty: how unlike every reference type a cell is, as one score and one flag.

Softmax confidence says how sure the model is *between* the reference's types;
it stays high for a type the reference lacks when that type sits next to a
known one. The novelty score reads the logits in two more ways:

- **class-conditional distance**: the squared Mahalanobis distance of the logit
  vector to the nearest reference class, with one shared covariance (Lee et al.
  2018): high when a cell wins a class without looking like that class's cells;
- **energy** ``-logsumexp(logits)`` (Liu et al. 2020): high when no class's
  logit is large, whichever wins the softmax.

Both read the end of the network, which the domain adversary aligns between the
reference and the target: the first hidden layers score novel types well too,
but they also carry the condition shift, which flagged 40-50 % of the known
target cells on Kang instead of 5 %. Each part is put on a common scale with
held-out reference cells (the model-selection split: ``(value - median) / (q90
- median)``) and the two are averaged. The flag threshold is the ``1 -
flag_rate`` quantile of the score on the validation split: about ``flag_rate``
of cells like the reference's are flagged.

Everything the score needs (class means, the whitening matrix, the scales) is a
fixed tensor: :class:`NoveltyScorer` runs in torch for prediction and is traced
into the ONNX graph by ``scnym export``, so ``scnym annotate`` computes it
torch-free, block by block.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

#: File of a model directory holding the fitted score.
NOVELTY_FILE = "scnym_novelty.npz"
#: Share of held-out reference cells the novelty flag marks.
DEFAULT_FLAG_RATE = 0.05
#: Ridge added to the covariance, as a fraction of its mean variance.
RIDGE = 1e-3
#: The score's parts, in the order of ``center`` and ``scale``.
COMPONENTS = ("mahalanobis_logits", "energy")
#: Fewest held-out cells to standardise and threshold on.
MIN_CELLS = 20


@dataclass(frozen=True)
class NoveltyFit:
    """What fitting the score fixed: its parameters and the threshold."""

    means: np.ndarray  # [classes, classes] class means of the logits (NaN: no cells)
    whitening: np.ndarray  # [classes, classes] W with W W^T = inverse shared covariance
    center: np.ndarray  # [2] medians of the parts on held-out reference cells
    scale: np.ndarray  # [2] q90 - median of the parts on held-out reference cells
    threshold: float
    flag_rate: float

    def save(self, folder: str | Path) -> None:
        """Write the arrays to ``folder / NOVELTY_FILE``."""
        np.savez(
            Path(folder) / NOVELTY_FILE, means=self.means, whitening=self.whitening,
            center=self.center, scale=self.scale, threshold=np.float64(self.threshold),
            flag_rate=np.float64(self.flag_rate),
        )  # fmt: skip

    @classmethod
    def load(cls, folder: str | Path) -> NoveltyFit | None:
        """The fit saved in ``folder``, or None for a model trained without one."""
        path = Path(folder) / NOVELTY_FILE
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as data:
            return cls(
                means=data["means"], whitening=data["whitening"], center=data["center"],
                scale=data["scale"], threshold=float(data["threshold"]),
                flag_rate=float(data["flag_rate"]),
            )  # fmt: skip

    def summary(self) -> dict:
        """The JSON-able description recorded in the manifest and the ONNX metadata."""
        return {
            "threshold": self.threshold,
            "flag_rate": self.flag_rate,
            "components": list(COMPONENTS),
            "center": self.center.tolist(),
            "scale": self.scale.tolist(),
            "score": (
                "mean of the standardised squared Mahalanobis distance of the logits to the "
                "nearest reference class and the standardised energy -logsumexp(logits); "
                "higher = less like any reference type"
            ),
        }


class NoveltyScorer(nn.Module):
    """Torch form of the score: the same code predicts in torch and is traced to ONNX.

    Parameters
    ----------
    fit
        The fitted parameters (:func:`fit_novelty`).
    """

    def __init__(self, fit: NoveltyFit) -> None:
        super().__init__()
        present = ~np.isnan(fit.means).any(axis=1)
        # centred on the mean of the class means: small values, so that float32 keeps
        # the distances' digits in |w|^2 - 2 w.m + |m|^2
        offset = fit.means[present].mean(axis=0)
        means = np.where(present[:, None], fit.means - offset, 0.0) @ fit.whitening
        norms = np.where(present, (means**2).sum(axis=1), np.inf)  # never the nearest
        self.register_buffer("offset", torch.as_tensor(offset, dtype=torch.float32))
        self.register_buffer("whitening", torch.as_tensor(fit.whitening, dtype=torch.float32))
        self.register_buffer("white_means", torch.as_tensor(means, dtype=torch.float32))
        self.register_buffer("mean_norms", torch.as_tensor(norms, dtype=torch.float32))
        self.register_buffer("center", torch.as_tensor(fit.center, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(fit.scale, dtype=torch.float32))

    def parts(self, logits: torch.Tensor) -> torch.Tensor:
        """The unscaled parts ``[cells, 2]``: Mahalanobis distance and energy."""
        white = (logits - self.offset) @ self.whitening
        # |w - m|^2 = |w|^2 - 2 w.m + |m|^2, one matrix product for all classes
        distances = (white**2).sum(dim=1, keepdim=True) - 2 * white @ self.white_means.T
        mahalanobis = (distances + self.mean_norms).min(dim=1).values
        return torch.stack([mahalanobis, -torch.logsumexp(logits, dim=1)], dim=1)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """The score of each cell from its logits."""
        return ((self.parts(logits) - self.center) / self.scale).mean(dim=1)

    @torch.no_grad()
    def score(self, logits: np.ndarray) -> np.ndarray:
        """The score of logits held in numpy (float32)."""
        tensor = torch.as_tensor(logits, dtype=torch.float32, device=self.whitening.device)
        return self(tensor).cpu().numpy()


def _whitening(logits: np.ndarray, labels: np.ndarray, means: np.ndarray) -> np.ndarray:
    residual = logits - means[labels]
    covariance = residual.T @ residual / max(len(logits), 1)
    ridge = RIDGE * max(float(np.trace(covariance)) / len(covariance), 1e-12)
    covariance += ridge * np.eye(len(covariance))
    return np.linalg.cholesky(np.linalg.inv(covariance))


def fit_novelty(
    train_logits: np.ndarray,
    train_labels: np.ndarray,
    scale_logits: np.ndarray,
    threshold_logits: np.ndarray,
    flag_rate: float = DEFAULT_FLAG_RATE,
) -> NoveltyFit | None:
    """Fit the score: class means and covariance on the training cells, scales and
    threshold on two held-out splits of labeled cells.

    Parameters
    ----------
    train_logits, train_labels
        Logits and class indices of the cells the model was trained on.
    scale_logits
        Logits of held-out cells standardising the parts (the model-selection split).
    threshold_logits
        Logits of other held-out cells setting the threshold (the validation split).
    flag_rate
        Share of held-out reference cells flagged.

    Returns
    -------
    None when either held-out split has fewer than :data:`MIN_CELLS` cells.
    """
    if min(len(scale_logits), len(threshold_logits)) < MIN_CELLS:
        return None
    logits = train_logits.astype(np.float64)
    n_classes = logits.shape[1]
    means = np.full((n_classes, n_classes), np.nan)
    for c in np.unique(train_labels):
        means[c] = logits[train_labels == c].mean(axis=0)
    whitening = _whitening(logits, train_labels, means)
    unscaled = NoveltyScorer(NoveltyFit(means, whitening, np.zeros(2), np.ones(2), np.inf, 0.0))
    with torch.no_grad():
        parts = unscaled.parts(torch.as_tensor(scale_logits, dtype=torch.float32)).numpy()
    center = np.median(parts, axis=0).astype(np.float64)
    scale = np.maximum(np.quantile(parts, 0.9, axis=0) - center, 1e-6)
    scaled = NoveltyFit(means, whitening, center, scale, np.inf, flag_rate)
    threshold = float(np.quantile(NoveltyScorer(scaled).score(threshold_logits), 1 - flag_rate))
    return NoveltyFit(means, whitening, center, scale, threshold, flag_rate)
