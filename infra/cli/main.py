"""The ``chargemesh`` console script: the root group with every command group added to it."""

from __future__ import annotations

from chargemesh.infra.cli import root


def main() -> None:
    """Console-script entry point."""
    root.main()
