"""Figures and logs: training curves, confusion matrices, 2-D views of the embedding."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
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


def plot_confusion_matrix(truth, pred, path: str | Path) -> None:
    """Heat map of true (rows, normalised to 1) vs predicted labels, with the counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth, pred = np.asarray(truth, dtype=str), np.asarray(pred, dtype=str)
    table = pd.crosstab(pd.Series(truth, name="true"), pd.Series(pred, name="predicted"))
    labels = sorted(set(table.index) | set(table.columns))
    table = table.reindex(index=labels, columns=labels, fill_value=0)
    fraction = table.to_numpy() / table.to_numpy().sum(axis=1, keepdims=True).clip(min=1)
    size = 1.0 + 0.55 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(fraction, cmap="Blues", vmin=0, vmax=1)
    for i, j in zip(*fraction.nonzero(), strict=True):
        colour = "white" if fraction[i, j] > 0.5 else "black"
        ax.text(j, i, table.iat[i, j], ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_embedding(embedding, colours: dict, path: str | Path, seed: int = 0) -> None:
    """t-SNE of an embedding (e.g. ``X_scnym``), one panel per colouring.

    Parameters
    ----------
    embedding
        ``[cells, dims]`` array.
    colours
        Panel title -> one label per cell.
    path
        PNG file.
    seed
        Seed of the t-SNE layout.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    embedding = np.asarray(embedding, dtype=np.float32)
    perplexity = float(min(30, max(2, (len(embedding) - 1) // 3)))
    layout = TSNE(perplexity=perplexity, init="pca", random_state=seed).fit_transform(embedding)
    fig, axes = plt.subplots(1, len(colours), figsize=(5.5 * len(colours), 4.5), squeeze=False)
    for ax, (title, labels) in zip(axes[0], colours.items(), strict=True):
        labels = np.asarray(labels)
        for label in np.unique(labels):
            mask = labels == label
            ax.scatter(*layout[mask].T, s=3, label=f"{label} ({mask.sum()})")
        ax.set_title(f"X_scnym (t-SNE), by {title}")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, markerscale=3, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
