"""The ``chargemesh`` console script: the one place the command line is composed.

Every command module defines its commands and groups standalone; ``COMMANDS`` lists them all, in
the order of ``chargemesh --help`` (click sorts by name), and :func:`build` adds them to the root
group. Nothing registers itself by being imported.
"""

from __future__ import annotations

import click
from chargemesh.infra.bench.suite import bench
from chargemesh.infra.cli.anchors import anchors
from chargemesh.infra.cli.audit import audit_command, checkpoint_command
from chargemesh.infra.cli.disputes import disputes
from chargemesh.infra.cli.events import events
from chargemesh.infra.cli.fleet import fleet
from chargemesh.infra.cli.grid import grid
from chargemesh.infra.cli.keys import keys
from chargemesh.infra.cli.ledger import ledger
from chargemesh.infra.cli.participant import credential
from chargemesh.infra.cli.processes import ps, sink, start, stop, worker
from chargemesh.infra.cli.publish import events_publish
from chargemesh.infra.cli.root import cli as root_group
from chargemesh.infra.cli.stack import down, status, topics, up
from chargemesh.infra.cli.swap import pack
from chargemesh.infra.report.html import report
from chargemesh.infra.sim.chaos import chaos
from chargemesh.infra.sim.demo import demo
from chargemesh.infra.sim.run import simulate

COMMANDS: tuple[click.Command, ...] = (
    anchors, audit_command, bench, chaos, checkpoint_command, credential, demo, disputes, down, events,
    fleet, grid, keys, ledger, pack, ps, report, simulate, sink, start, status, stop, topics, up,
    worker,
)


def build() -> click.Group:
    """The root group with every command added (idempotent: adding one twice replaces it)."""
    events.add_command(events_publish)
    for command in COMMANDS:
        root_group.add_command(command)
    return root_group


cli = build()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="chargemesh")
