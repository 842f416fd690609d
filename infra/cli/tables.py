"""Tables that never cut a value: the one table helper of the CLI, ``simulate`` and ``demo``.

Rich truncates a cell with an ellipsis when a table is wider than the console (``jurisdi…``,
``21,016,9…``). Here a table's columns fold instead of truncating, and when stdout is not a
terminal (piped, captured) or the terminal is narrower than the table's natural width, the table
is printed as plain whitespace-separated columns: every value whole, one row a line.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

COLUMN_GAP = "  "
TABLE_WIDTH_PROBE = 10_000  # measure a table's natural width as if the console were this wide
ROWS_PLAIN_MAX = 100_000  # a plain table is built in memory: bound it


def out() -> Console:
    """A console per use: it writes to the current stdout and reads COLUMNS when it is made."""
    return Console(highlight=False)


def new_table(title: str | None, headers: Iterable[str],
              right: Iterable[str] = (), min_width: int | None = None) -> Table:
    """A rich table whose columns wrap (fold) and never truncate; ``right`` are right-aligned."""
    right_set = set(right)
    table = Table(title=title, min_width=min_width)
    for header in headers:
        table.add_column(header, overflow="fold", no_wrap=False,
                         justify="right" if header in right_set else "left")
    return table


def fold_columns(table: Table) -> Table:
    """Make an existing table's columns fold rather than truncate (returns the same table)."""
    for column in table.columns:
        column.overflow = "fold"
        column.no_wrap = False
    return table


def _plain(cell: RenderableType) -> str:
    if isinstance(cell, Text):
        return cell.plain
    if isinstance(cell, str):
        return Text.from_markup(cell).plain
    return str(cell)


def plain_lines(table: Table) -> list[str]:
    """The table as lines of whitespace-separated columns, each value whole (title first)."""
    columns = [[_plain(column.header)] + [_plain(cell) for cell in column.cells]
               for column in table.columns]
    if not columns:
        return []
    rows = list(zip(*columns, strict=True))[: ROWS_PLAIN_MAX + 1]
    widths = [max(len(line) for value in column for line in value.splitlines() or [""])
              for column in columns]
    lines = [] if table.title is None else [_plain(table.title)]
    for row in rows:
        cells = [value.replace("\n", " ") for value in row]
        padded = [cell.rjust(width) if column.justify == "right" else cell.ljust(width)
                  for cell, width, column in zip(cells, widths, table.columns, strict=True)]
        lines.append(COLUMN_GAP.join(padded).rstrip())
    return lines


def fits(console: Console, table: Table) -> bool:
    """The console is a terminal at least as wide as the table's natural width."""
    if not console.is_terminal:
        return False
    natural = Measurement.get(console, console.options.update_width(TABLE_WIDTH_PROBE), table)
    return natural.maximum <= console.width


def print_table(console: Console, table: Table) -> None:
    """Print ``table`` on ``console`` folded, or as plain columns when it would not fit."""
    fold_columns(table)
    if fits(console, table):
        console.print(table)
        return
    for line in plain_lines(table):
        console.print(Text(line), soft_wrap=True)
    console.print()


def print_tables(console: Console, tables: Sequence[Table]) -> None:
    for table in tables:
        print_table(console, table)
