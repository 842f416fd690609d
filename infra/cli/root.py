"""The ``chargemesh`` click group and what its commands share.

``cli`` is the bare group: it loads the settings. Command modules define standalone commands and
groups (``@click.command()``, ``@click.group(cls=ChargemeshGroup)``) and read the settings with
:func:`settings_of`; :mod:`chargemesh.infra.cli.main` adds every one of them to ``cli`` in one
explicit list::

    @click.command()
    @click.pass_context
    def worker(ctx: click.Context) -> None:
        settings = settings_of(ctx)
        ...

A command does not catch what it cannot fix: the group (:mod:`chargemesh.infra.cli.errors`)
turns an expected failure (a service down, a port in use, a missing file, a chargemesh
``...Error``) into one line on stderr and exit 1; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

import click
from chargemesh.infra.cli.errors import DEBUG_ENV, ChargemeshGroup, configure_logging
from chargemesh.infra.config import ENV_PREFIX, Settings, load_settings


def settings_of(ctx: click.Context) -> Settings:
    """The settings the group callback loaded for this invocation."""
    settings = ctx.find_root().obj
    if not isinstance(settings, Settings):
        raise click.UsageError("settings were not loaded (invoke through the chargemesh group)")
    return settings


@click.group(name="chargemesh", cls=ChargemeshGroup)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the embedded stack keeps stack.json, logs and data "
    f"(default: ${ENV_PREFIX}STATE_DIR or .chargemesh).",
)
@click.option(
    "--debug",
    is_flag=True,
    envvar=DEBUG_ENV,
    help=f"On failure, print the traceback too; let client libraries log (or ${DEBUG_ENV}=1).",
)
@click.pass_context
def cli(ctx: click.Context, state_dir: Path | None, debug: bool) -> None:
    """chargemesh: signed EV charging events on Kafka, history in ClickHouse."""
    configure_logging(debug)
    environ = dict(os.environ)
    if state_dir is not None:
        # Through the environment mapping, so <state_dir>/chargemesh.toml is found as well.
        environ[ENV_PREFIX + "STATE_DIR"] = str(state_dir)
    ctx.obj = load_settings(environ)
