"""The command-line verbs of export: ``scnym export`` (needs torch) and ``scnym inspect`` (does not).

The exporter is imported inside the command, so that ``scnym inspect`` and the
other verbs start without torch.
"""

from __future__ import annotations

import json

import click


@click.command()
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
    from .exporter import ParityError, export_model
    from .graph import DEFAULT_OPSET

    try:
        report = export_model(
            model_dir, output, precision=precision, opset=opset or DEFAULT_OPSET,
            check=check, input_mode=input_mode, force=force, measure_speed=True,
        )  # fmt: skip
    except ParityError as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"Wrote {report.path} ({report.size_bytes / 1e6:.2f} MB, {precision})")
    click.echo(
        f"Parity on {report.n_check_cells} {report.check_source} cells: "
        f"max |d prob| {report.max_prob_diff:.2e}, max |d embedding| {report.max_embed_diff:.2e}, "
        f"argmax agreement with fp32 {report.argmax_agreement_fp32:.2%}"
        + (
            f", max relative |d novelty| {report.max_novelty_diff:.2e}"
            if report.max_novelty_diff == report.max_novelty_diff  # not NaN
            else ", no novelty score (model trained before it existed)"
        )
    )
    click.echo(
        f"CPU speed: onnxruntime {report.onnx_cells_per_s:,.0f} cells/s, "
        f"torch {report.torch_cells_per_s:,.0f} cells/s"
    )


@click.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print all metadata as JSON.")
def inspect(model, as_json) -> None:
    """Print what an exported ONNX MODEL (a file or a registry name) carries, without torch."""
    from scnym.infer.commands import model_file
    from scnym.infer.model import read_metadata

    meta = read_metadata(model_file(model))
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
    threshold, calibration = meta.get("confidence_threshold"), meta.get("calibration") or {}
    click.echo(f"Confidence threshold: {_short(threshold)}" + (
        f" (flags {calibration['flag_rate']:.0%} of held-out reference cells; temperature "
        f"{calibration['temperature']:.3g}, calibration error {calibration['ece_before']:.3f} -> "
        f"{calibration['ece_after']:.3f})" if calibration.get("confidence_threshold") else ""
    ))  # fmt: skip
    novelty = meta.get("novelty") or {}
    click.echo(
        f"Novelty score: output 'novelty', flag above {novelty['threshold']:.4g} (flags "
        f"{novelty['flag_rate']:.0%} of held-out reference cells)"
        if novelty
        else "Novelty score: none (exported before the score existed; cells are flagged by "
        "confidence alone)"
    )
    metrics = meta.get("metrics", {})
    click.echo("Metrics: " + ", ".join(f"{k}={_short(v)}" for k, v in metrics.items()))
    producer = meta.get("producer", {})
    click.echo(
        f"Producer: scnym {producer.get('version')}, torch {producer.get('torch')}, "
        f"opset {producer.get('opset')}; created {meta.get('created')}"
    )
    click.echo(f"Weights sha256: {meta.get('weights_sha256')}")
    sealed = meta.get("metadata_sha256")
    click.echo(
        f"Metadata sha256: {sealed} (verified)" if sealed else
        "Metadata sha256: not recorded (exported before files were sealed; not verified)"
    )  # fmt: skip


def _short(value) -> str:
    """A metric as people read it: 4 significant digits for floats."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
