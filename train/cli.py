"""The ``scnym`` command line: one entry point assembling the verbs each part owns.

``train``, ``predict``, ``demo`` and ``configs`` live in :mod:`scnym.commands`,
``export`` and ``inspect`` in :mod:`scnym.export.commands`, ``annotate`` in
:mod:`scnym.infer.commands` and ``models`` in :mod:`scnym.models.commands`.
None imports torch before it runs, so the verbs that do not train start from
the base install.
"""

from __future__ import annotations

import errno
import logging
import sys
import traceback
import warnings

import click
from scnym.export.commands import export, inspect
from scnym.infer.commands import annotate
from scnym.models.commands import models_group

from . import __version__
from .commands import configs, demo, explain, predict, train

#: Failures a user can act on: shown as one ``Error:`` line (``-v`` adds the traceback).
USER_ERRORS = (ValueError, NotImplementedError, RuntimeError, OSError)
#: Modules whose warnings the command line hides unless ``-v``.
THIRD_PARTY_WARNINGS = r"^(zarr|anndata|numcodecs|onnxruntime|onnx|torch|h5py|dask|distributed)\b"
#: ``click.Context.meta`` key: whether ``-v`` was given.
VERBOSE = "scnym.verbose"


def describe_error(err: BaseException) -> str:
    """One line saying what failed and what to do."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        where = f" while writing {err.filename}" if err.filename else ""
        return (
            f"No space left on the device{where}: free some space and run again "
            "(annotate keeps its finished blocks: add --resume)"
        )
    if isinstance(err, PermissionError):
        return (
            f"Permission denied: {err.filename or err}: check the permissions, or write "
            "elsewhere (--output)"
        )
    return str(err) or type(err).__name__


class _Group(click.Group):
    """Show a user's errors as one-line messages, not tracebacks."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise  # click's own exits (--help is a RuntimeError) and messages
        except USER_ERRORS as err:
            if ctx.meta.get(VERBOSE):
                traceback.print_exc()
            raise click.ClickException(describe_error(err)) from err


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
    ctx.meta[VERBOSE] = verbose
    if not verbose:
        # third-party notices a user cannot act on (zarr format notes, anndata's future
        # changes, onnxruntime's quantisation hints); ``-v`` shows them
        warnings.filterwarnings("ignore", module=THIRD_PARTY_WARNINGS)


for command in (train, predict, demo, configs, explain, export, inspect, annotate, models_group):
    main.add_command(command)


if __name__ == "__main__":
    sys.exit(main())
