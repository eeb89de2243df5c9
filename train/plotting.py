"""Figures and logs: training curves, confusion matrices, 2-D views of the embedding, dot plots."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
from scnym.infer.memory import model_inputs

from .explain import group_labels
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


def plot_embedding(
    embedding, colours: dict, path: str | Path, seed: int = 0, scores: dict | None = None
) -> None:
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
    scores
        Panel title -> one number per cell (e.g. ``scNym_novelty``), drawn on a
        colour scale (NaN: grey).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    embedding = np.asarray(embedding, dtype=np.float32)
    perplexity = float(min(30, max(2, (len(embedding) - 1) // 3)))
    layout = TSNE(perplexity=perplexity, init="pca", random_state=seed).fit_transform(embedding)
    scores = scores or {}
    panels = len(colours) + len(scores)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.5), squeeze=False)
    for ax, (title, values) in zip(axes[0][len(colours) :], scores.items(), strict=True):
        values = np.asarray(values, dtype=float)
        ax.scatter(*layout[np.isnan(values)].T, s=3, c="lightgrey")
        shown = ax.scatter(*layout[~np.isnan(values)].T, s=3, c=values[~np.isnan(values)],
                           cmap="viridis", vmax=np.nanquantile(values, 0.99))  # fmt: skip
        fig.colorbar(shown, ax=ax, shrink=0.8)
        ax.set_title(f"X_scnym (t-SNE), by {title}")
        ax.set_xticks([])
        ax.set_yticks([])
    for ax, (title, labels) in zip(axes[0], colours.items(), strict=False):
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


def plot_dotplot(
    mean: pd.DataFrame,
    fraction: pd.DataFrame,
    gene_groups: dict[str, list[str]],
    path: str | Path,
    title: str = "Genes that made the model call each type",
) -> None:
    """Dot plot of each group's top genes, as scanpy's ``rank_genes_groups_dotplot`` draws it.

    Dot size: the fraction of the group's cells expressing the gene; colour: its
    mean expression in the group, scaled to the gene's largest group mean.

    Parameters
    ----------
    mean, fraction
        Groups (rows) x genes (columns), e.g. from :func:`dotplot_tables`.
    gene_groups
        Group -> its top genes, bracketed above the columns.
    path
        PNG file.
    title
        Figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = mean.to_numpy(dtype=float)
    scaled = values / np.where(values.max(axis=0) > 0, values.max(axis=0), 1.0)
    n_rows, n_cols = mean.shape
    fig, ax = plt.subplots(figsize=(1.6 + 0.32 * n_cols, 1.6 + 0.32 * n_rows))
    ys, xs = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    dots = ax.scatter(
        xs.ravel(), ys.ravel(), s=180 * fraction.to_numpy().ravel(),
        c=scaled.ravel(), cmap="Reds", vmin=0, vmax=1, edgecolors="grey", linewidths=0.3,
    )  # fmt: skip
    ax.set_xticks(range(n_cols), mean.columns, rotation=90, fontsize=7)
    ax.set_yticks(range(n_rows), mean.index, fontsize=8)
    ax.set_xlim(-0.6, n_cols - 0.4)
    ax.set_ylim(n_rows - 0.5, -0.5)
    start = 0
    for group, genes in gene_groups.items():
        ax.annotate(group, xy=(start + (len(genes) - 1) / 2, -0.7), ha="center", va="bottom",
                    fontsize=7, annotation_clip=False)  # fmt: skip
        ax.plot([start - 0.3, start + len(genes) - 0.7], [-0.65, -0.65], color="k", lw=0.8,
                clip_on=False)  # fmt: skip
        start += len(genes)
    sizes = [ax.scatter([], [], s=180 * f, color="grey", label=f"{f:.0%}") for f in (0.25, 0.5, 1)]
    ax.legend(handles=sizes, title="cells expressing", fontsize=7, title_fontsize=7,
              loc="upper left", bbox_to_anchor=(1.08, 1), frameon=False)  # fmt: skip
    ax.set_title(title, pad=18, fontsize=9)
    fig.colorbar(dots, ax=ax, fraction=0.03, pad=0.01, label="mean expression (scaled)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def dotplot_tables(
    adata: anndata.AnnData,
    table: pd.DataFrame,
    groupby: str,
    n_genes: int = 5,
    layer: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, list[str]]]:
    """What a dot plot of each group's top genes shows, as :func:`plot_dotplot` takes it.

    Returns
    -------
    The mean log1p(CPM) and the fraction of cells expressing (> 0) of each top gene
    (columns, in rank order, group after group: a gene may appear twice) in each
    group (rows), and group -> its top genes.
    """
    top = table[table["rank"] <= n_genes]
    gene_groups = {group: list(genes) for group, genes in top.groupby("group", sort=False)["gene"]}
    columns = [gene for genes in gene_groups.values() for gene in genes]  # may repeat a gene
    X, _ = model_inputs(adata, columns, layer, min_gene_overlap=0.0)
    labels = group_labels(adata, groupby)
    codes = labels.cat.codes.to_numpy()
    inside = [codes == labels.cat.categories.get_loc(group) for group in gene_groups]
    mean = np.stack([np.asarray(X[rows].mean(axis=0)).ravel() for rows in inside])
    fraction = np.stack([np.asarray((X[rows] > 0).mean(axis=0)).ravel() for rows in inside])
    return (
        pd.DataFrame(mean, index=list(gene_groups), columns=columns),
        pd.DataFrame(fraction, index=list(gene_groups), columns=columns),
        gene_groups,
    )
