"""The ``scnym`` command line: one entry point assembling the verbs each part owns.

``train``, ``predict``, ``demo`` and ``configs`` live in :mod:`scnym.commands`,
``export`` and ``inspect`` in :mod:`scnym.export.commands`, ``annotate`` in
:mod:`scnym.infer.commands` and ``models`` in :mod:`scnym.models.commands`.
None imports torch before it runs, so the verbs that do not train start from
the base install.
"""

from __future__ import annotations

import logging
import sys

import click
from scnym.export.commands import export, inspect
from scnym.infer.commands import MODEL_RESOLVER, annotate
from scnym.models.commands import models_group, registry_model_file

from . import __version__
from .commands import configs, demo, predict, train


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
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """scNym: semi-supervised adversarial cell type annotation."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    ctx.meta[MODEL_RESOLVER] = registry_model_file


for command in (train, predict, demo, configs, export, inspect, annotate, models_group):
    main.add_command(command)


if __name__ == "__main__":
    sys.exit(main())
