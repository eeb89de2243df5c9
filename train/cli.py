"""The ``scnym`` command line.

Commands import their heavy dependencies lazily: the CLI itself is torch-free,
so commands that do not train run from the base install.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click
import pandas as pd

from . import __version__
from .config import GENE_SELECTIONS


def _read_h5ad(path: str):
    import anndata

    return anndata.read_h5ad(path)


class _Group(click.Group):
    """Show a user's input errors as one-line messages, not tracebacks."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (ValueError, FileNotFoundError, NotImplementedError) as err:
            raise click.ClickException(str(err)) from err


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="scnym")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def main(verbose: bool) -> None:
    """scNym: semi-supervised adversarial cell type annotation."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


@main.command()
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
@click.option("--out", "out_path", default="./scnym_outputs", show_default=True, type=click.Path())
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
    results = adata.uns["scNym_train_results"]
    click.echo(
        f"Model written to {out_path}: {results['n_cell_types']} classes, "
        f"{results['n_genes']} genes, held-out accuracy {results['final_acc']:.3f}"
    )


@main.command()
@click.argument("data", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--model",
    "model_dir",
    required=True,
    help="Model directory, ONNX file, or registry name (e.g. pretrained_human).",
)
@click.option("--out", "out_file", default=None, type=click.Path(dir_okay=False),
              help="Annotated h5ad (default: DATA with '_scnym' appended).")  # fmt: skip
@click.option("--key-added", default="scNym", show_default=True)
@click.option("--device", default="auto", show_default=True)
def predict(data, model_dir, out_file, key_added, device) -> None:
    """Annotate DATA.h5ad in memory with a trained model.

    A model directory runs through torch; an ONNX file or a registry model
    (``scnym models list``) through onnxruntime.
    """
    from .api import scnym_api

    adata = _read_h5ad(data)
    scnym_api(
        adata,
        task="predict",
        trained_model=model_dir,
        key_added=key_added,
        config={"device": device},
    )
    out_file = out_file or str(Path(data).with_name(Path(data).stem + "_scnym.h5ad"))
    adata.write_h5ad(out_file)
    counts = adata.obs[key_added].value_counts()
    click.echo(f"Wrote {out_file}: {adata.n_obs} cells annotated")
    click.echo(counts.to_string())


@main.command()
@click.option("--out", "out_path", default="scnym_demo", show_default=True, type=click.Path())
@click.option("--epochs", type=int, default=None, help="Override n_epochs (default 100).")
@click.option("--config", "config_name", default="new_identity_discovery", show_default=True)
def demo(out_path, epochs, config_name) -> None:
    """Train on the bundled Kang PBMCs, export, annotate the stimulated cells torch-free.

    Control cells are labelled, stimulated cells unlabelled; the report folder holds
    training curves, a confusion matrix and a 2-D view of the embedding.
    """
    from .demo import run_demo

    result = run_demo(out_path=out_path, config=config_name, n_epochs=epochs)
    click.echo(f"Trained in {result.train_seconds:.0f} s; everything is in {out_path}/")
    click.echo(
        f"Stimulated cells annotated torch-free from {out_path}/stim.zarr: "
        f"accuracy {result.accuracy:.3f}, balanced accuracy {result.balanced_accuracy:.3f}, "
        f"{result.cells_per_s:,.0f} cells/s, gene coverage {result.gene_fraction:.1%}, "
        f"agreement with torch {result.agreement_with_torch:.1%}"
    )
    click.echo("Recall per cell type:")
    click.echo(result.recall.round(3).to_string())
    click.echo("Report: " + ", ".join(str(p) for p in result.report.values()))


@main.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="ONNX file.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32",
              show_default=True)  # fmt: skip
@click.option("--opset", type=int, default=None, help="ONNX opset (default 17).")
@click.option("--check", "check", type=click.Path(exists=True, dir_okay=False), default=None,
              help="h5ad of real cells for the parity check (default: synthetic counts).")  # fmt: skip
@click.option("--input-mode", type=click.Choice(["counts", "log1p_cpm"]), default="counts",
              show_default=True, help="What the graph takes as input.")  # fmt: skip
@click.option("--force", is_flag=True, help="Write fp16/int8 below the agreement threshold.")
def export(model_dir, output, precision, opset, check, input_mode, force) -> None:
    """Export MODEL_DIR to one self-describing ONNX file, checked against torch."""
    from scnym.export import DEFAULT_OPSET, ParityError, export_model

    try:
        report = export_model(
            model_dir, output, precision=precision, opset=opset or DEFAULT_OPSET,
            check=check, input_mode=input_mode, force=force,
        )  # fmt: skip
    except ParityError as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"Wrote {report.path} ({report.size_bytes / 1e6:.2f} MB, {precision})")
    click.echo(
        f"Parity on {report.n_check_cells} {report.check_source} cells: "
        f"max |d prob| {report.max_prob_diff:.2e}, max |d embedding| {report.max_embed_diff:.2e}, "
        f"argmax agreement with fp32 {report.argmax_agreement_fp32:.2%}"
    )
    click.echo(
        f"CPU speed: onnxruntime {report.onnx_cells_per_s:,.0f} cells/s, "
        f"torch {report.torch_cells_per_s:,.0f} cells/s"
    )


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print all metadata as JSON.")
def inspect(model, as_json) -> None:
    """Print what an exported ONNX MODEL carries (no torch needed)."""
    from scnym.infer.model import read_metadata

    meta = read_metadata(model)
    if as_json:
        click.echo(json.dumps(meta, indent=1))
        return
    genes, classes = meta["genes"], meta["classes"]
    prep = meta["preprocessing"]
    click.echo(f"Model: {model}  (format {meta['format_version']}, {meta.get('precision')})")
    click.echo(f"Genes: {len(genes)} {meta.get('gene_id_type')} ({', '.join(genes[:5])}, ...)")
    selection = prep.get("gene_selection")
    if selection:
        click.echo(f"  chosen from {selection.get('n_genes_in_data', '?')}: {selection['method']}")
    click.echo(f"Classes ({len(classes)}): {', '.join(classes)}")
    click.echo(
        f"Input: {prep['input_mode']}; log1p(counts / total_counts * {prep['target_sum']:g}), "
        f"trained on {prep.get('training_input')}"
    )
    click.echo(f"Confidence threshold: {meta.get('confidence_threshold')}")
    metrics = meta.get("metrics", {})
    click.echo("Metrics: " + ", ".join(f"{k}={v}" for k, v in metrics.items()))
    producer = meta.get("producer", {})
    click.echo(
        f"Producer: scnym {producer.get('version')}, torch {producer.get('torch')}, "
        f"opset {producer.get('opset')}; created {meta.get('created')}"
    )
    click.echo(f"Weights sha256: {meta.get('weights_sha256')}")


@main.command()
@click.argument("store")
@click.option("--model", "model", required=True,
              help="ONNX file written by `scnym export`, or a registry model name "
                   "(`scnym models list`).")  # fmt: skip
@click.option("--output", default=None,
              help="Write results here (.zarr, .h5ad, .parquet, .csv) instead of into STORE.")  # fmt: skip
@click.option("--layer", default=None, help="Read this layer instead of X.")
@click.option("--gene-key", default=None, help="var column holding the gene identifiers.")
@click.option("--key-added", default="scNym", show_default=True)
@click.option("--batch-size", type=int, default=None, help="Rows per block (whole chunks).")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu",
              show_default=True)  # fmt: skip
@click.option("--threads", type=int, default=None, help="onnxruntime intra-op threads.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run.")
@click.option("--workers", type=int, default=None, help="Run on a local Dask cluster of N workers.")
@click.option("--scheduler", default=None, help="Address of a Dask scheduler to run on.")
@click.option("--min-gene-overlap", type=float, default=0.5, show_default=True)
@click.option("--unknown-threshold", type=float, default=None,
              help="Label cells below this confidence 'Unknown' (default: the model's).")  # fmt: skip
@click.option("--probabilities", is_flag=True, help="Also write the class probabilities.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def annotate(store, model, output, layer, gene_key, key_added, batch_size, device, threads,
             resume, workers, scheduler, min_gene_overlap, unknown_threshold, probabilities,
             quiet) -> None:  # fmt: skip
    """Annotate the cells of STORE (zarr/h5ad, path or URL) with an ONNX model, torch-free."""
    from scnym.infer import annotate as run

    model = _model_file(model)
    try:
        result = run(
            store, model, output=output, layer=layer, gene_key=gene_key, key_added=key_added,
            batch_size=batch_size, device=device, threads=threads, resume=resume,
            workers=workers, scheduler=scheduler, min_gene_overlap=min_gene_overlap,
            unknown_threshold="auto" if unknown_threshold is None else unknown_threshold,
            write_probabilities=probabilities, progress=not quiet,
        )  # fmt: skip
    except RuntimeError as err:
        raise click.ClickException(str(err)) from err
    cov = result.coverage
    click.echo(
        f"Gene coverage: {cov.n_found}/{cov.n_model_genes} model genes "
        f"({cov.gene_fraction:.1%}), {cov.counts_fraction:.1%} of counts captured"
    )
    click.echo(
        f"Annotated {result.n_cells:,} cells in {result.seconds:.1f} s "
        f"({result.cells_per_s:,.0f} cells/s); results in {result.written_to}"
    )
    counts = pd.Series(result.labels).value_counts()
    click.echo(counts.to_string())


def _model_file(model: str) -> str:
    """``model`` itself when it is a file, else the verified file of that registry model."""
    if Path(model).is_file():
        return model
    from scnym.models import load_registry, resolve

    registry = load_registry()
    if registry.find(model, kind="model") is None:
        listed = ", ".join(registry.names("model")) or "none"
        raise click.ClickException(
            f"--model {model}: no such file, and not a registry model (registry models: {listed})"
        )
    return str(resolve(model, registry, kind="model"))


@main.group("models")
def models_group() -> None:
    """List, show, fetch and verify the registry's models and atlases (torch-free)."""


@models_group.command("list")
def models_list() -> None:
    """Table of the registry's entries and whether their files are here."""
    from scnym.models import entry_status, load_registry

    registry = load_registry()
    if not registry.entries:
        click.echo(f"No entries in {registry.path}")
        return
    rows = [
        (e.name, e.kind, e.species, str(e.n_genes), str(len(e.classes)),
         entry_status(e, registry), ", ".join(e.aliases))
        for e in registry.entries
    ]  # fmt: skip
    header = ("name", "kind", "species", "genes", "classes", "file", "aliases")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        click.echo("  ".join(cells).rstrip())
    click.echo(f"Registry: {registry.path}")


@models_group.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the entry as JSON.")
def models_show(name, as_json) -> None:
    """Print every field of the registry entry NAME."""
    from scnym.models import entry_path, entry_status, load_registry

    registry = load_registry()
    entry = registry.get(name)
    data = entry.to_dict()
    data["path"] = str(entry_path(entry, registry))
    data["status"] = entry_status(entry, registry)
    if as_json:
        click.echo(json.dumps(data, indent=1))
        return
    trained = data.pop("trained_on")
    classes = data.pop("classes")
    for key, value in data.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        click.echo(f"{key + ':':15s} {shown}")
    click.echo(f"{'classes:':15s} ({len(classes)}) {', '.join(classes)}")
    click.echo(f"{'trained_on:':15s} {trained.pop('dataset')}, {trained.pop('n_cells')} cells")
    per_class = trained.pop("cells_per_class")
    click.echo(" " * 16 + ", ".join(f"{k} {v}" for k, v in per_class.items()))
    for key, value in trained.items():
        click.echo(" " * 16 + f"{key}: {value}")


@models_group.command("fetch")
@click.argument("name")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def models_fetch(name, quiet) -> None:
    """Download (if needed) and verify NAME; print the path of its file."""
    from scnym.models import fetch

    click.echo(str(fetch(name, progress=not quiet)))


@models_group.command("verify")
@click.argument("name")
def models_verify(name) -> None:
    """Recompute the sha256 of NAME's file; exit status 1 when it differs from the registry."""
    from scnym.models import verify

    result = verify(name)
    if result.ok:
        click.echo(f"ok {result.name}: {result.path} sha256 {result.actual}")
        return
    click.echo(
        f"MISMATCH {result.name}: {result.path} has sha256 {result.actual}, the registry "
        f"expects {result.expected}" + ("; the cached file was removed" if result.removed else "")
    )
    raise SystemExit(1)


@main.command("configs")
@click.option("--show", default=None, help="Print one preset's full values as JSON.")
def configs(show) -> None:
    """List the config presets (or show one)."""
    from .config import PRESETS, get_config

    if show:
        click.echo(json.dumps(get_config(show).to_dict(), indent=1))
        return
    for name, make in PRESETS.items():
        click.echo(f"{name:24s} {make().description}")


if __name__ == "__main__":
    sys.exit(main())
