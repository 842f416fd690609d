"""The ``chargemesh`` command line.

``cli`` is the click group; other modules add their commands to it::

    from chargemesh.infra.cli.root import cli, settings_of

    @cli.command()
    @click.pass_context
    def worker(ctx: click.Context) -> None:
        settings = settings_of(ctx)
        ...

and list their module in ``COMMAND_MODULES`` so ``main`` imports (and so registers) them.

A command does not catch what it cannot fix: the group (:mod:`chargemesh.infra.cli.errors`)
turns an expected failure (a service down, a port in use, a missing file, a chargemesh
``...Error``) into one line on stderr and exit 1; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import click
from chargemesh.infra.cli.errors import DEBUG_ENV, ChargemeshGroup, configure_logging
from chargemesh.infra.config import ENV_PREFIX, Settings, load_settings
from chargemesh.infra.stack.embedded import ComponentStatus, EmbeddedStack, StackError
from chargemesh.streams.topics import ALL_TOPICS, RETENTION_FOREVER_MS, partitions_for
from rich.console import Console
from rich.table import Table

# Modules that register more commands on ``cli`` when imported (e.g. "chargemesh.processors.cli").
COMMAND_MODULES: tuple[str, ...] = ("chargemesh.infra.cli.anchors", "chargemesh.infra.cli.processes",
                                     "chargemesh.infra.cli.ledger", "chargemesh.infra.cli.events",
                                     "chargemesh.infra.sim.demo",
                                     "chargemesh.infra.cli.audit",
                                     "chargemesh.infra.cli.disputes",
                                     "chargemesh.infra.cli.grid",
                                     "chargemesh.infra.cli.participant",
                                     "chargemesh.infra.cli.fleet",
                                     "chargemesh.infra.cli.swap",
                                     "chargemesh.infra.report.html",
                                     "chargemesh.infra.bench.suite",
                                     "chargemesh.infra.sim.run",
                                     "chargemesh.infra.sim.chaos",)
# More rows for `status`, appended by command modules (e.g. the processes `start` launched).
STATUS_EXTENSIONS: list[Callable[[Settings], list[ComponentStatus]]] = []

_MS_PER_DAY = 86_400_000
_console = Console()


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


@cli.command()
@click.pass_context
def up(ctx: click.Context) -> None:
    """Start the embedded broker and ClickHouse (if not external), create topics and tables."""
    started_s = time.monotonic()
    try:
        result = EmbeddedStack(settings_of(ctx)).up()
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    settings = settings_of(ctx)
    dev = None
    if settings.kafka_embedded:
        from chargemesh.infra.stack.bootstrap import ensure_dev_governance

        dev = ensure_dev_governance(settings)
    elapsed_s = time.monotonic() - started_s
    running = ", ".join(f"{n} pid {p}" for n, p in result.pids.items()) or "nothing embedded"
    _console.print(
        f"up in {elapsed_s:.1f} s: started {list(result.started) or 'nothing'} ({running}); "
        f"{len(result.topics.created)} topics created; "
        f"migrations applied: {list(result.migrations_applied) or 'none'}"
    )
    if dev is not None:
        _console.print(f"dev governance root {'created' if dev.created else 'in place'}: "
                       f"issue credentials with `chargemesh credential issue --issuer-key "
                       f"{dev.issuer_key_file}`")


@cli.command()
@click.pass_context
def down(ctx: click.Context) -> None:
    """Stop the processes `up` started for this state directory (nothing else)."""
    try:
        outcomes = EmbeddedStack(settings_of(ctx)).down()
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    if not outcomes:
        _console.print("nothing to stop")
    for name, outcome in outcomes.items():
        _console.print(f"{name}: {outcome}")


@cli.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """Health of every component; exits 1 if any is unhealthy."""
    settings = settings_of(ctx)
    try:
        components = EmbeddedStack(settings).status()
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    for extension in STATUS_EXTENSIONS:
        components += extension(settings)
    _console.print(_status_table(components))
    if not all(component.healthy for component in components):
        ctx.exit(1)


@cli.command()
@click.pass_context
def topics(ctx: click.Context) -> None:
    """The topic catalogue: name, key, partitions, retention and what each topic carries."""
    settings = settings_of(ctx)
    table = Table(title="chargemesh topics")
    for column in ("topic", "key", "partitions", "retention", "carries"):
        table.add_column(column, overflow="fold")
    for spec in ALL_TOPICS:
        table.add_row(
            spec.name,
            spec.key,
            str(partitions_for(spec, settings.partitions)),
            _retention_text(spec.retention_ms),
            spec.doc,
        )
    _console.print(table)


def _status_table(components: list[ComponentStatus]) -> Table:
    table = Table(title="chargemesh stack")
    for column in ("component", "mode", "address", "pid", "healthy", "detail"):
        table.add_column(column, overflow="fold")
    for component in components:
        table.add_row(
            component.name,
            "embedded" if component.embedded else "external",
            component.address,
            "-" if component.pid is None else str(component.pid),
            "[green]yes[/green]" if component.healthy else "[red]NO[/red]",
            component.detail,
        )
    return table


def _retention_text(retention_ms: int) -> str:
    if retention_ms == RETENTION_FOREVER_MS:
        return "forever"
    if retention_ms % _MS_PER_DAY == 0:
        return f"{retention_ms // _MS_PER_DAY} d"
    return f"{retention_ms} ms"


def _register_command_modules() -> None:
    for module in COMMAND_MODULES:
        importlib.import_module(module)


def main() -> None:
    """Console-script entry point."""
    _register_command_modules()
    cli(prog_name="chargemesh")

