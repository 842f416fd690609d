"""``chargemesh up|down|status|topics``: the embedded stack of one state directory."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import click
from chargemesh.infra.cli.anchors import read_anchor_entries
from chargemesh.infra.cli.processes import processor_components
from chargemesh.infra.cli.root import settings_of
from chargemesh.infra.cli.tables import print_table
from chargemesh.infra.config import PROFILE_DEV, ConfigError, Settings
from chargemesh.infra.stack.embedded import ComponentStatus, EmbeddedStack, StackError
from chargemesh.streams.topics import ALL_TOPICS, RETENTION_FOREVER_MS, partitions_for
from chargemesh.units import DAY_MS
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from chargemesh.infra.stack.bootstrap import DevGovernance

_console = Console()


@click.command()
@click.pass_context
def up(ctx: click.Context) -> None:
    """Start the embedded broker and ClickHouse (if not external), create topics and tables."""
    started_s = time.monotonic()
    settings = settings_of(ctx)
    try:
        profile = settings.trust_profile  # a bad CHARGEMESH_PROFILE fails before anything starts
        result = EmbeddedStack(settings).up()
    except (StackError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from exc
    dev = None
    if profile == PROFILE_DEV:
        from chargemesh.infra.stack.bootstrap import ensure_dev_governance

        dev = ensure_dev_governance(settings)
    elapsed_s = time.monotonic() - started_s
    running = ", ".join(f"{n} pid {p}" for n, p in result.pids.items()) or "nothing embedded"
    _console.print(
        f"up in {elapsed_s:.1f} s: started {list(result.started) or 'nothing'} ({running}); "
        f"{len(result.topics.created)} topics created; "
        f"migrations applied: {list(result.migrations_applied) or 'none'}"
    )
    for line in trust_setup_lines(settings, dev):
        _console.print(line, highlight=False, markup=False, soft_wrap=True)


def trust_setup_lines(settings: Settings, dev: "DevGovernance | None") -> list[str]:
    """What `up` says about trust (issue 15, hole 8): never a silent anchor. The dev profile
    names the development root and where its private keys are; production names the anchors
    configured, or warns that there are none and says how to add one."""
    from chargemesh.infra.stack.bootstrap import DEV_ROOT_ID

    path = settings.trust_anchors_path
    ids = [e["authority_id"] for e in read_anchor_entries(path)]
    if dev is not None:
        return [
            f"trust: DEV PROFILE: development root anchor {DEV_ROOT_ID} "
            f"{'created' if dev.created else 'in place'} in {path}, its private keys in "
            f"{dev.root_key_file} and {dev.issuer_key_file}: for development only (anyone "
            f"with this folder can mint credentials); CHARGEMESH_PROFILE=production runs without "
            f"it",
            f"issue credentials with `chargemesh credential issue --issuer-key "
            f"{dev.issuer_key_file}`"]
    if not ids:
        return [f"trust: WARNING: production profile, no trust anchors in {path}: the workers "
                "recognise no authority and refuse every event. Add the deployment's root "
                "authority: `chargemesh anchors add --authority-id ID --public-key-hex HEX`"]
    lines = [f"trust: production profile, {len(ids)} trust anchor(s) in {path}: "
             f"{', '.join(ids)}"]
    if DEV_ROOT_ID in ids:
        lines.append(f"trust: WARNING: {DEV_ROOT_ID} (a development root, its keys in the state "
                     f"folder) is still an anchor: `chargemesh anchors remove --authority-id "
                     f"{DEV_ROOT_ID}`")
    return lines


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
