"""The command-line verbs of training: ``scnym train``, ``predict``, ``demo`` and ``configs``.

torch and the training modules are imported inside the commands, so that the
verbs of the other parts start without them.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from scnym.infer.contract import DEFAULT_KEY_ADDED, DEFAULT_MIN_GENE_OVERLAP, TRAIN_RESULTS_KEY

from .config import GENE_SELECTIONS


def _read_h5ad(path: str):
    import anndata

    return anndata.read_h5ad(path)


@click.command()
@click.argument("data", type=click.Path(exists=True, dir_okay=False))
@click.option("--groupby", required=True, help="obs column of labels ('Unlabeled' = target cells).")
@click.option("--domain-groupby", default=None, help="obs column of domains for the adversary.")
@click.option(
    "--config",
    "config_name",
    default="new_identity_discovery",
    show_default=True,
    help="Preset name or a JSON file of config overrides.",
)
@click.option("-o", "--output", "--out", "out_path", default="./scnym_outputs", show_default=True,
              type=click.Path(), help="Folder of the model directory.")  # fmt: skip
@click.option("--epochs", type=int, default=None, help="Override n_epochs.")
@click.option("--device", default=None, help="auto, cpu or cuda (default: the config's, auto).")
@click.option("--seed", type=int, default=None, help="Random seed (default: the config's, 0).")
@click.option("--threads", type=int, default=None,
              help="CPU threads for torch (default: torch's). On a shared machine, the cores you own.")  # fmt: skip
@click.option("--gene-selection", type=click.Choice(GENE_SELECTIONS), default=None,
              help="Genes the model reads (default: the config's, markers); variance needs "
              "--n-top-genes.")  # fmt: skip
@click.option(
    "--n-top-genes", type=int, default=None, help="Genes kept by --gene-selection variance."
)
def train(
    data,
    groupby,
    domain_groupby,
    config_name,
    out_path,
    epochs,
    device,
    seed,
    threads,
    gene_selection,
    n_top_genes,
) -> None:
    """Train a model on DATA.h5ad and write its model directory to --out."""
    import torch

    from .api import scnym_api
    from .config import get_config
    from .manifest import stopping_summary

    if threads is not None:
        # torch's OpenMP threads spin while they wait: more threads than free cores
        # made an epoch 25x slower here (1.2 s alone, 30 s beside one busy process).
        torch.set_num_threads(threads)

    config = get_config(config_name)
    overrides = {
        key: value
        for key, value in {
            "n_epochs": epochs,
            "device": device,
            "seed": seed,
            "gene_selection": gene_selection,
            "n_top_genes": n_top_genes,
        }.items()
        if value is not None
    }
    adata = _read_h5ad(data)
    scnym_api(
        adata,
        task="train",
        groupby=groupby,
        domain_groupby=domain_groupby,
        out_path=out_path,
        config=config.updated(overrides),
    )
    results = adata.uns[TRAIN_RESULTS_KEY]
    click.echo(
        f"Model written to {out_path}: {results['n_cell_types']} classes, "
        f"{results['n_genes']} genes, held-out accuracy {results['final_acc']:.3f}"
    )
    final = config.updated(overrides)
    click.echo(stopping_summary(results, final.n_epochs, final.patience))


@click.command()
@click.argument("data", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--model",
    "model_dir",
    required=True,
    help="Model directory, ONNX file, or registry name (e.g. pretrained_human).",
)
@click.option("-o", "--output", "--out", "out_file", default=None, type=click.Path(dir_okay=False),
              help="Annotated h5ad (default: DATA with '_scnym' appended).")  # fmt: skip
@click.option("--overwrite", is_flag=True, help="Replace an existing output (never DATA).")
@click.option("--layer", default=None, help="Read this layer instead of X ('raw': adata.raw).")
@click.option("--gene-key", default=None, help="var column holding the gene identifiers.")
@click.option("--key-added", default=DEFAULT_KEY_ADDED, show_default=True)
@click.option("--min-gene-overlap", type=float, default=DEFAULT_MIN_GENE_OVERLAP, show_default=True,
              help="Least fraction of the model's genes the data must hold.")  # fmt: skip
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--threads", type=int, default=None, help="CPU threads (torch or onnxruntime).")
@click.option("--unknown-threshold", type=float, default=None,
              help="Flag cells whose novelty score is above this (default: the model's; models "
                   "without the score: confidence below it).")  # fmt: skip
def predict(data, model_dir, out_file, overwrite, layer, gene_key, key_added, min_gene_overlap,
            device, threads, unknown_threshold) -> None:  # fmt: skip
    """Annotate DATA.h5ad in memory with a trained model.

    A model directory runs through torch; an ONNX file or a registry model
    (``scnym models list``) through onnxruntime, without torch.
    """
    from scnym.infer.contract import ResultKeys
    from scnym.infer.guards import check_output

    out_file = out_file or str(Path(data).with_name(Path(data).stem + "_scnym.h5ad"))
    if Path(out_file).suffix.lower() != ".h5ad":
        raise click.BadParameter(
            f"{out_file}: predict writes an annotated .h5ad (for tables or zarr, use "
            "`scnym annotate DATA -o results.csv|.parquet|.zarr`)", param_hint="-o/--output"
        )  # fmt: skip
    check_output(out_file, data, overwrite)
    adata = _read_h5ad(data)
    threshold = "auto" if unknown_threshold is None else unknown_threshold
    _predict(adata, model_dir, key_added, device, layer, gene_key, min_gene_overlap, threads,
             threshold)  # fmt: skip
    adata.write_h5ad(out_file)
    counts = adata.obs[key_added].value_counts()
    click.echo(f"Wrote {out_file}: {adata.n_obs} cells annotated")
    click.echo(counts.to_string())
    unknown = ResultKeys(key_added).unknown
    if unknown in adata.obs:
        flag = adata.obs[unknown]
        click.echo(
            f"Flagged as unlike the reference: {int(flag.sum()):,} cells ({flag.mean():.1%}), in "
            f"obs['{unknown}']; labels unchanged"
        )


def _predict(adata, model, key_added, device, layer, gene_key, min_gene_overlap, threads,
             unknown_threshold="auto") -> None:  # fmt: skip
    """Predict on ``layer`` of ``adata`` (genes named by ``gene_key``); keys written into ``adata``."""
    from scnym.infer.contract import PROBABILITIES_UNS_KEY, ResultKeys
    from scnym.infer.memory import matrix_of

    query = adata
    if layer is not None or gene_key is not None:
        import anndata
        import pandas as pd

        X, var_names = matrix_of(adata, layer, gene_key)
        query = anndata.AnnData(
            X=X, obs=pd.DataFrame(index=adata.obs_names), var=pd.DataFrame(index=var_names)
        )
    if Path(model).is_dir():
        import torch

        from .api import scnym_api

        if threads is not None:
            torch.set_num_threads(threads)
        scnym_api(query, task="predict", trained_model=model, key_added=key_added,
                  config={"device": device}, min_gene_overlap=min_gene_overlap,
                  unknown_threshold=unknown_threshold)  # fmt: skip
    else:
        from scnym.infer.commands import model_file
        from scnym.infer.memory import predict_adata

        predict_adata(query, model_file(model), key_added, device, min_gene_overlap, threads,
                      unknown_threshold)  # fmt: skip
    if query is not adata:
        keys = ResultKeys(key_added)
        for column in (keys.label, keys.confidence, keys.novelty, keys.unknown):
            if column in query.obs:
                adata.obs[column] = query.obs[column].values
        adata.obsm[keys.embedding] = query.obsm[keys.embedding]
        adata.uns[PROBABILITIES_UNS_KEY] = query.uns[PROBABILITIES_UNS_KEY]


@click.command()
@click.option("-o", "--output", "--out", "out_path", default="scnym_demo", show_default=True,
              type=click.Path(), help="Folder of the demo's outputs.")  # fmt: skip
@click.option("--epochs", type=int, default=None, help="Override n_epochs (default 100).")
@click.option("--config", "config_name", default="new_identity_discovery", show_default=True)
@click.option("--leave-out", default=None, metavar="TYPE",
              help="Remove this cell type from the labeled cells, to see the novelty score "
                   "find it among the stimulated cells (e.g. B).")  # fmt: skip
def demo(out_path, epochs, config_name, leave_out) -> None:
    """Train on the bundled Kang PBMCs, export, annotate the stimulated cells torch-free.

    Control cells are labelled, stimulated cells unlabelled; the report folder holds
    training curves, a confusion matrix, a 2-D view of the embedding and a saliency dotplot.
    """
    from .demo import run_demo

    result = run_demo(out_path=out_path, config=config_name, n_epochs=epochs, leave_out=leave_out)
    click.echo(f"Trained in {result.train_seconds:.0f} s; everything is in {out_path}/")
    click.echo(result.training_summary)
    click.echo(
        f"Stimulated cells annotated torch-free from {out_path}/stim.zarr: "
        f"accuracy {result.accuracy:.3f}, balanced accuracy {result.balanced_accuracy:.3f}, "
        f"{result.cells_per_s:,.0f} cells/s, gene coverage {result.gene_fraction:.1%}, "
        f"agreement with torch {result.agreement_with_torch:.1%}"
    )
    novelty = result.novelty
    if novelty:
        click.echo(f"Flagged as unlike the reference: {novelty['flagged']:.1%} of the cells")
    if "auroc" in novelty:
        click.echo(
            f"Left out {novelty['left_out']!r}: novelty AUROC {novelty['auroc']:.3f}, flagged "
            f"{novelty['left_out_flagged']:.1%} of its cells and {novelty['known_flagged']:.1%} "
            "of the others"
        )
    click.echo("Recall per cell type:")
    click.echo(result.recall.round(3).to_string())
    click.echo("Report: " + ", ".join(str(p) for p in result.report.values()))


@click.command("configs")
@click.option("--show", default=None, help="Print one preset's full values as JSON.")
def configs(show) -> None:
    """List the config presets (or show one)."""
    from .config import PRESETS, get_config

    if show:
        click.echo(json.dumps(get_config(show).to_dict(), indent=1))
        return
    for name, make in PRESETS.items():
        marks = {"new_identity_discovery": " (the default of train, the API and the demo)",
                 "default": " (another name of no_new_identity)"}  # fmt: skip
        click.echo(f"{name:24s} {make().description}{marks.get(name, '')}")


#: ``scnym.explain.METHODS``, spelled out so that the command line starts without numpy.
EXPLAIN_METHODS = ("saliency", "guided", "integrated_gradients")


@click.command()
@click.argument("data", type=click.Path(exists=True, dir_okay=False))
@click.option("--model", required=True,
              help="Model directory (every method), or an ONNX file or registry name (saliency "
              "only, by finite differences through onnxruntime).")  # fmt: skip
@click.option("--groupby", required=True,
              help="obs column of the groups: labels, clusters, or the prediction 'scNym' "
              "(predicted with the model when absent).")  # fmt: skip
@click.option("--method", type=click.Choice(EXPLAIN_METHODS), default="saliency", show_default=True)
@click.option("--n-genes", type=int, default=50, show_default=True, help="Genes kept per group.")
@click.option("--cells-per-group", type=int, default=100, show_default=True,
              help="Cells sampled per group (seeded).")  # fmt: skip
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False),
              help="CSV of group,rank,gene,score (default: DATA with '_explain.csv').")  # fmt: skip
@click.option("--out-h5ad", default=None, type=click.Path(dir_okay=False),
              help="Also write DATA with the ranking in uns[KEY_ADDED], scanpy's rank_genes_groups "
              "structure.")  # fmt: skip
@click.option("--overwrite", is_flag=True, help="Replace existing outputs (never DATA).")
@click.option("--dotplot", default=None, type=click.Path(dir_okay=False),
              help="Draw each group's top 5 genes as a dot plot to this PNG.")  # fmt: skip
@click.option(
    "--key-added", default=None, help="uns key of the ranking (default scNym_rank_genes)."
)
@click.option("--layer", default=None, help="Read this layer instead of X ('raw': adata.raw).")
@click.option("--min-gene-overlap", type=float, default=DEFAULT_MIN_GENE_OVERLAP, show_default=True,
              help="Least fraction of the model's genes the data must hold.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the cell sampling.")
@click.option("--n-steps", type=int, default=100, show_default=True,
              help="Riemann steps of integrated gradients.")  # fmt: skip
@click.option("--threads", type=int, default=None, help="CPU threads for torch.")
def explain(data, model, groupby, method, n_genes, cells_per_group, output, out_h5ad, overwrite,
            dotplot, key_added, layer, min_gene_overlap, seed, n_steps, threads) -> None:  # fmt: skip
    """Rank the genes that made the model call each group's cell type.

    For each group of --groupby, the attributions of up to --cells-per-group of
    its cells toward the group's class (or, for a group that is not a class, the
    class the model predicts most often in it) are averaged per gene.
    """
    import torch
    from scnym.infer.contract import DEFAULT_EXPLAIN_KEY
    from scnym.infer.guards import check_output

    from .interpret import rank_genes

    output = output or str(Path(data).with_name(Path(data).stem + "_explain.csv"))
    for path in (output, out_h5ad):
        check_output(path, data, overwrite)
    if threads is not None:
        torch.set_num_threads(threads)
    adata = _read_h5ad(data)
    key_added = key_added or DEFAULT_EXPLAIN_KEY
    table = rank_genes(adata, model, groupby, method=method, n_genes=n_genes, seed=seed,
                       cells_per_group=cells_per_group, key_added=key_added, layer=layer,
                       n_steps=n_steps, min_gene_overlap=min_gene_overlap)  # fmt: skip
    table.to_csv(output, index=False)
    params = adata.uns[key_added]["params"]
    targets = dict(zip(params["groups"], params["targets"], strict=True))
    click.echo(f"Wrote {output}: top {n_genes} genes of {len(targets)} groups "
               f"({method}, attributing the class {params['output']})")  # fmt: skip
    for group, genes in table[table["rank"] <= 5].groupby("group", sort=False)["gene"]:
        target = targets[group]
        toward = "" if target == group else f" (-> {target})"
        click.echo(f"  {group}{toward}: {', '.join(genes)}")
    if out_h5ad:
        adata.write_h5ad(out_h5ad)
        click.echo(f"Wrote {out_h5ad} with the ranking in uns[{key_added!r}]")
    if dotplot:
        from .plotting import dotplot_tables, plot_dotplot

        plot_dotplot(*dotplot_tables(adata, table, groupby, layer=layer), dotplot)
        click.echo(f"Wrote {dotplot}")
