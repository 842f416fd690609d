"""CLI tables never cut a value: piped, or in a terminal narrower than the table, every value is
printed whole (rich would print ``jurisdi…``, ``ADJUSTME…`` and ``21,016,9…``)."""

from __future__ import annotations

import io
import types

import pytest
from chargemesh.infra.cli.tables import new_table, print_table
from chargemesh.infra.sim import run as sim_run
from rich.console import Console

WHOLE_VALUES = ("jurisdiction", "ADJUSTMENT", "21,016,912", "DE-BY-MUNICH-NORTH")


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=40, force_terminal=terminal, highlight=False), buffer


@pytest.mark.parametrize("terminal", [False, True])
def test_a_wide_table_is_printed_whole(terminal: bool) -> None:
    table = new_table("Settlements", ("jurisdiction", "currency", "kind", "total"),
                      right=("total",))
    table.add_row("DE-BY-MUNICH-NORTH", "EUR", "ADJUSTMENT", "21,016,912")
    console, buffer = _console(terminal)
    print_table(console, table)
    text = buffer.getvalue()
    for value in WHOLE_VALUES:
        assert value in text
    assert "…" not in text


def test_simulate_summary_prints_every_value_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    result = {
        "settlements": [("DE-BY-MUNICH-NORTH", "EUR", "ADJUSTMENT", 1_204, 21_016_912,
                         3_000, 12_345.67)],
        "finality": [("FINAL", 1_204)],
        "rejections": [("CREDENTIAL_REVOKED", 3)],
        "latencies": [("ADJUSTMENT", 10, 1.5, 2.5, 3.5)],
    }
    monkeypatch.setattr(sim_run, "summary_tables", lambda *_args: result)
    summary = types.SimpleNamespace(run_id="r", prefix="p", started_at_ms=0)
    console, buffer = _console(terminal=False)
    sim_run.print_summary(console, types.SimpleNamespace(), summary)  # type: ignore[arg-type]
    text = buffer.getvalue()
    for value in WHOLE_VALUES + ("CREDENTIAL_REVOKED", "12,345.67"):
        assert value in text
    assert "…" not in text
