"""Training log and training-curve figure written into the model directory."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from .trainer import TrainHistory

LOG_FILE = "training_log.csv"
CURVES_FILE = "training_curves.png"


def history_frame(history: TrainHistory) -> pd.DataFrame:
    """One row per epoch: losses, weights, validation loss and accuracy, seconds."""
    return pd.DataFrame([dataclasses.asdict(r) for r in history.records])


def write_training_log(history: TrainHistory, out_path: str | Path) -> pd.DataFrame:
    """Write ``training_log.csv`` and ``training_curves.png`` into ``out_path``."""
    frame = history_frame(history)
    out = Path(out_path)
    frame.to_csv(out / LOG_FILE, index=False)
    if len(frame):
        plot_training_curves(frame, out / CURVES_FILE, best_epoch=history.best_epoch)
    return frame


def plot_training_curves(frame: pd.DataFrame, path: str | Path, best_epoch: int = -1) -> None:
    """Plot the losses and the validation accuracy per epoch to a PNG file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for column, label in [
        ("sup_loss", "supervised"),
        ("unsup_loss", "consistency"),
        ("dan_loss", "domain adversary"),
        ("val_loss", "validation (model selection)"),
    ]:
        if column in frame and frame[column].abs().sum() > 0:
            ax_loss.plot(frame["epoch"], frame[column], label=label)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(fontsize=8)
    ax_acc.plot(frame["epoch"], frame["val_acc"], color="k", label="validation accuracy")
    if best_epoch >= 0:
        for ax in (ax_loss, ax_acc):
            ax.axvline(best_epoch, color="grey", linestyle=":", label="best epoch")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    ax_acc.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
