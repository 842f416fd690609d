"""``chargemesh up|down|status|topics``: the embedded stack of one state directory."""

from __future__ import annotations

import time

import click
from chargemesh.infra.cli.processes import processor_components
from chargemesh.infra.cli.root import settings_of
from chargemesh.infra.cli.tables import print_table
from chargemesh.infra.stack.embedded import ComponentStatus, EmbeddedStack, StackError
from chargemesh.streams.topics import ALL_TOPICS, RETENTION_FOREVER_MS, partitions_for
from chargemesh.units import DAY_MS
from rich.console import Console
from rich.table import Table

_console = Console()


@click.command()
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


@click.command()
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


@click.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """Health of every component; exits 1 if any is unhealthy."""
    settings = settings_of(ctx)
    try:
        components = EmbeddedStack(settings).status()
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    components += processor_components(settings)
    print_table(_console, _status_table(components))
    if not all(component.healthy for component in components):
        ctx.exit(1)


@click.command()
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
    print_table(_console, table)


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
    if retention_ms % DAY_MS == 0:
        return f"{retention_ms // DAY_MS} d"
    return f"{retention_ms} ms"
