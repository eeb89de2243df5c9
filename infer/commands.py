"""The command-line verb of the torch-free base layer: ``scnym annotate``."""

from __future__ import annotations

import click

from .contract import DEFAULT_KEY_ADDED, DEFAULT_MIN_GENE_OVERLAP, ResultKeys


def model_file(model: str) -> str:
    """The ONNX file ``model`` names (a file, or a registry model name)."""
    from .model import resolve_model

    return str(resolve_model(model))


@click.command()
@click.argument("store")
@click.option("--model", "model", required=True,
              help="ONNX file written by `scnym export`, or a registry model name "
                   "(`scnym models list`).")  # fmt: skip
@click.option("-o", "--output", default=None,
              help="Write results here (.zarr, .h5ad, .parquet, .csv) instead of into STORE.")  # fmt: skip
@click.option("--overwrite", is_flag=True, help="Replace an existing --output (never STORE).")
@click.option("--layer", default=None,
              help="Read this layer instead of X (of a SOMA Experiment: its X layer, default raw).")  # fmt: skip
@click.option("--measurement", default=None,
              help="Of a TileDB-SOMA Experiment: the measurement to read (default RNA).")  # fmt: skip
@click.option("--obs-filter", default=None,
              help="Of a TileDB-SOMA Experiment: cells to annotate, e.g. \"tissue_general == 'blood'\".")  # fmt: skip
@click.option("--gene-key", default=None, help="var column holding the gene identifiers.")
@click.option("--key-added", default=DEFAULT_KEY_ADDED, show_default=True)
@click.option("--batch-size", type=int, default=None, help="Rows per block (whole chunks).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True, help="auto: CUDA when onnxruntime-gpu is installed.")  # fmt: skip
@click.option("--threads", type=int, default=None, help="onnxruntime intra-op threads.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run.")
@click.option("--workers", type=int, default=None, help="Run on a local Dask cluster of N workers.")
@click.option("--scheduler", default=None, help="Address of a Dask scheduler to run on.")
@click.option("--min-gene-overlap", type=float, default=DEFAULT_MIN_GENE_OVERLAP, show_default=True,
              help="Least fraction of the model's genes the data must hold.")  # fmt: skip
@click.option("--unknown-threshold", type=float, default=None,
              help="Flag cells (obs '<key>_unknown') whose novelty score is above this "
                   "(default: the model's, set on held-out reference cells; models exported "
                   "without the score: confidence below it).")  # fmt: skip
@click.option("--probabilities", is_flag=True, help="Also write the class probabilities.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def annotate(store, model, output, overwrite, layer, measurement, obs_filter, gene_key, key_added, batch_size, device, threads,
             resume, workers, scheduler, min_gene_overlap, unknown_threshold, probabilities,
             quiet) -> None:  # fmt: skip
    """Annotate the cells of STORE (zarr/h5ad/TileDB-SOMA, path or URL) with an ONNX model, torch-free."""
    from .annotation import annotate as run

    model = model_file(model)
    result = run(
        store, model, output=output, layer=layer, gene_key=gene_key, key_added=key_added,
        batch_size=batch_size, device=device, threads=threads, resume=resume,
        workers=workers, scheduler=scheduler, min_gene_overlap=min_gene_overlap,
        unknown_threshold="auto" if unknown_threshold is None else unknown_threshold,
        write_probabilities=probabilities, overwrite=overwrite, progress=not quiet,
        measurement=measurement, obs_filter=obs_filter,
    )  # fmt: skip
    cov = result.coverage
    click.echo(
        f"Gene coverage: {cov.n_found}/{cov.n_model_genes} model genes "
        f"({cov.gene_fraction:.1%}), {cov.counts_fraction:.1%} of counts captured"
    )
    if cov.gene_fraction < DEFAULT_MIN_GENE_OVERLAP:
        click.echo(
            f"Warning: the data holds only {cov.gene_fraction:.1%} of the model's genes: the "
            "labels are unreliable (the model never saw cells this incomplete)"
        )
    click.echo(
        f"Annotated {result.n_cells:,} cells in {result.seconds:.1f} s "
        f"({result.cells_per_s:,.0f} cells/s); results in {result.written_to}"
    )
    import pandas as pd

    counts = pd.Series(result.labels).value_counts()
    click.echo(counts.to_string())
    empty = result.record.get("n_cells_without_counts", 0)
    if empty:
        click.echo(f"{empty:,} cells hold no counts in the model's genes: they get no label (NaN)")
    if result.unknown is not None:
        keys = ResultKeys(key_added)
        by = "novelty" if result.novelty is not None else "confidence"
        click.echo(
            f"Flagged as unlike the reference ({by}): {int(result.unknown.sum()):,} cells "
            f"({result.unknown.mean():.1%}), in obs['{keys.unknown}']; labels unchanged"
        )
