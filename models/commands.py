"""The command-line verbs of the model registry: ``scnym models list|show|fetch|verify`` (torch-free)."""

from __future__ import annotations

import json

import click

from .cache import entry_path, entry_status, fetch, verify
from .registry import load_registry


@click.group("models")
def models_group() -> None:
    """List, show, fetch and verify the registry's models and atlases (torch-free)."""


@models_group.command("list")
def models_list() -> None:
    """Table of the registry's entries and whether their files are here."""
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
    click.echo(str(fetch(name, progress=not quiet)))


@models_group.command("verify")
@click.argument("name")
def models_verify(name) -> None:
    """Recompute the sha256 of NAME's file; exit status 1 when it differs from the registry."""
    result = verify(name)
    if result.ok:
        click.echo(f"ok {result.name}: {result.path} sha256 {result.actual}")
        return
    click.echo(
        f"MISMATCH {result.name}: {result.path} has sha256 {result.actual}, the registry "
        f"expects {result.expected}" + ("; the cached file was removed" if result.removed else "")
    )
    raise SystemExit(1)
