"""The command line is composed in one place (chargemesh.infra.cli.main) with the same commands
as before the split; importing a command module registers nothing."""

from __future__ import annotations

import click
from click.testing import CliRunner

from chargemesh.infra.cli import root
from chargemesh.infra.cli.main import COMMANDS, cli

COMMAND_NAMES = (
    "anchors", "audit", "bench", "chaos", "checkpoint", "credential", "demo", "disputes", "down",
    "events", "fleet", "grid", "keys", "ledger", "pack", "ps", "report", "simulate", "sink",
    "start", "status", "stop", "topics", "up", "worker",
)
SUBCOMMANDS = {
    "anchors": ("add", "list", "remove"),
    "events": ("publish", "tail"),
    "ledger": ("show",),
}


def test_help_lists_every_command_once() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    lines = result.output.split("Commands:\n", 1)[1].splitlines()
    listed = tuple(line.split()[0] for line in lines if line.startswith("  ") and line[2] != " ")
    assert listed == COMMAND_NAMES
    assert tuple(sorted(cli.commands)) == COMMAND_NAMES
    assert len(COMMANDS) == len(COMMAND_NAMES)


def test_groups_keep_their_subcommands() -> None:
    for name, subcommands in SUBCOMMANDS.items():
        group = cli.commands[name]
        assert isinstance(group, click.Group)
        assert tuple(sorted(group.commands)) == subcommands


def test_the_root_group_is_composed_by_main_only() -> None:
    assert cli is root.cli
    assert not hasattr(root, "COMMAND_MODULES")
    assert not hasattr(root, "STATUS_EXTENSIONS")
