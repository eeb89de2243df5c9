"""Confidences that mean what they say: temperature scaling and the Unknown threshold.

After training, the logits of held-out labeled cells fix two numbers that travel
with the model (manifest, ONNX graph and metadata):

- a **temperature** T, fitted on the model-selection split by minimising the
  negative log-likelihood of softmax(logits / T) (Guo et al. 2017); it changes no
  prediction, only how confident each one is;
- the **confidence threshold** below which a cell is ``Unknown``: the
  ``flag_rate`` quantile (default 5 %) of the calibrated confidence of the
  validation split, so that about that share of cells like the reference's is
  flagged, instead of a fixed 0.9 that flagged a third of the cells of some
  targets.

The expected calibration error (ECE) of the validation split before and after is
recorded. numpy and scipy only: the logits come from :mod:`scnym.prediction`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

#: Share of held-out reference cells the Unknown threshold flags.
DEFAULT_FLAG_RATE = 0.05
#: Temperatures searched (log-uniformly between these).
TEMPERATURE_RANGE = (0.05, 20.0)
#: Fewest held-out cells to calibrate on; below it the model keeps T = 1.
MIN_CELLS = 20
ECE_BINS = 15


@dataclass(frozen=True)
class Calibration:
    """What calibration fixed and measured (recorded in the manifest and the ONNX file)."""

    temperature: float
    confidence_threshold: float | None
    flag_rate: float
    ece_before: float
    ece_after: float
    n_fit_cells: int
    n_check_cells: int

    def to_dict(self) -> dict:
        return asdict(self)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of ``labels``."""

    def nll(log_t: float) -> float:
        log_p = log_softmax(logits / np.exp(log_t), axis=1)
        return -float(log_p[np.arange(len(labels)), labels].mean())

    low, high = np.log(TEMPERATURE_RANGE)
    return float(np.exp(minimize_scalar(nll, bounds=(low, high), method="bounded").x))


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by cells."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    error = 0.0
    for b in np.unique(bins):
        members = bins == b
        error += members.sum() * abs(correct[members].mean() - confidence[members].mean())
    return float(error / max(len(labels), 1))


def calibrate(
    fit_logits: np.ndarray,
    fit_labels: np.ndarray,
    check_logits: np.ndarray,
    check_labels: np.ndarray,
    flag_rate: float = DEFAULT_FLAG_RATE,
) -> Calibration:
    """Fit the temperature on one held-out split; threshold and ECE on the other.

    With fewer than :data:`MIN_CELLS` cells in either split, the temperature stays
    1 and no threshold is set (the ECE is still measured where possible).
    """
    enough = len(fit_labels) >= MIN_CELLS and len(check_labels) >= MIN_CELLS
    temperature = fit_temperature(fit_logits, fit_labels) if enough else 1.0
    before = softmax(check_logits, axis=1)
    after = softmax(check_logits / temperature, axis=1)
    threshold = float(np.quantile(after.max(axis=1), flag_rate)) if enough else None
    measurable = len(check_labels) > 0
    return Calibration(
        temperature=temperature,
        confidence_threshold=threshold,
        flag_rate=flag_rate,
        ece_before=expected_calibration_error(before, check_labels) if measurable else np.nan,
        ece_after=expected_calibration_error(after, check_labels) if measurable else np.nan,
        n_fit_cells=int(len(fit_labels)),
        n_check_cells=int(len(check_labels)),
    )
