"""Forward-only ClickHouse migrations: ``sinks/migrations/NNNN_name.sql``, applied in order.

Each file ships inside the wheel (package data of ``chargemesh.sinks``) and is read with
``importlib.resources``, so an installed chargemesh migrates without the source tree. Applied
files are recorded in ``<database>.schema_migrations``; a recorded file is never run again and
files are never edited once released: a change is a new, higher-numbered file.

A file may hold several statements; a statement ends at a line ending in ``;``. Full-line
``--`` comments are dropped. ClickHouse DDL is not transactional, so every statement must be
re-runnable (``IF NOT EXISTS``): a file that failed half-way is simply applied again.
"""

from __future__ import annotations

import dataclasses
import re
from importlib import resources

from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors

from chargemesh.checks import ensure
from chargemesh.ports import ClickHouseSettings

MIGRATIONS_PACKAGE = "chargemesh.sinks"
MIGRATIONS_DIR = "migrations"
MIGRATIONS_TABLE = "schema_migrations"
MIGRATION_NAME = re.compile(r"^(?P<number>\d{4})_[a-z0-9_]+\.sql$")
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MIGRATIONS_MAX = 9_999
STATEMENTS_PER_MIGRATION_MAX = 200
MIGRATION_BYTES_MAX = 1_000_000
CONNECT_TIMEOUT_S = 5
QUERY_TIMEOUT_S = 300

_CREATE_MIGRATIONS_TABLE = f"""
CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE}
(
    name String,
    applied_at DateTime
)
ENGINE = ReplacingMergeTree()
ORDER BY name
"""


class MigrationError(RuntimeError):
    """A migration file is malformed, or the database refused it."""


@dataclasses.dataclass(frozen=True)
class Migration:
    name: str
    statements: tuple[str, ...]


def clickhouse_client(
    settings: ClickHouseSettings, database: bool = True, query_timeout_s: float = QUERY_TIMEOUT_S
) -> Client:
    """A native-protocol client; ``database=False`` connects to ``default`` (before it exists).

    ``query_timeout_s`` bounds every socket read and write: a sink passes a short one so a hung
    server (e.g. stopped with SIGSTOP) fails its insert in seconds instead of minutes.
    """
    ensure(query_timeout_s > 0, f"query_timeout_s must be positive: {query_timeout_s}")
    host, port = settings.clickhouse_address
    return Client(
        host=host,
        port=port,
        database=settings.clickhouse_database if database else "default",
        user=settings.clickhouse_user,
        password=settings.clickhouse_password,
        connect_timeout=CONNECT_TIMEOUT_S,
        send_receive_timeout=query_timeout_s,
    )


def split_statements(sql: str) -> list[str]:
    """Statements of one file: drop full-line comments, cut after every line ending in ``;``."""
    statements: list[str] = []
    current: list[str] = []
    for line in sql.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("--"):
            continue
        current.append(line.rstrip())
        if stripped.endswith(";"):
            statements.append("\n".join(current).rstrip().rstrip(";").rstrip())
            current = []
    if current:
        statements.append("\n".join(current).strip())
    return [statement for statement in statements if statement]


def load_migrations() -> list[Migration]:
    """Every shipped migration, in file-number order."""
    folder = resources.files(MIGRATIONS_PACKAGE).joinpath(MIGRATIONS_DIR)
    names = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".sql"))
    ensure(len(names) <= MIGRATIONS_MAX, f"more than {MIGRATIONS_MAX} migrations")
    migrations: list[Migration] = []
    numbers: set[str] = set()
    for name in names:
        match = MIGRATION_NAME.match(name)
        if match is None:
            raise MigrationError(f"migration file {name!r} is not named NNNN_lowercase_name.sql")
        if match["number"] in numbers:
            raise MigrationError(f"two migrations share the number {match['number']}")
        numbers.add(match["number"])
        sql = folder.joinpath(name).read_text(encoding="utf-8")
        if len(sql.encode()) > MIGRATION_BYTES_MAX:
            raise MigrationError(f"{name} is larger than {MIGRATION_BYTES_MAX} bytes")
        statements = split_statements(sql)
        if not 0 < len(statements) <= STATEMENTS_PER_MIGRATION_MAX:
            raise MigrationError(f"{name} holds {len(statements)} statements")
        migrations.append(Migration(name=name, statements=tuple(statements)))
    return migrations


def _database_name(settings: ClickHouseSettings) -> str:
    name = settings.clickhouse_database
    if IDENTIFIER.match(name) is None:
        raise MigrationError(f"clickhouse_database {name!r} is not a plain identifier")
    return name


def applied_migrations(settings: ClickHouseSettings) -> list[str]:
    """Names recorded in ``schema_migrations``; empty if the database or table does not exist."""
    database = _database_name(settings)
    client = clickhouse_client(settings, database=False)
    try:
        rows = client.execute(
            "SELECT count() FROM system.tables WHERE database = %(db)s AND name = %(table)s",
            {"db": database, "table": MIGRATIONS_TABLE},
        )
        if rows[0][0] == 0:
            return []
        names = client.execute(f"SELECT DISTINCT name FROM {database}.{MIGRATIONS_TABLE}")
        return sorted(str(row[0]) for row in names)
    finally:
        client.disconnect()


def _apply_one(client: Client, migration: Migration) -> None:
    for index, statement in enumerate(migration.statements, start=1):
        try:
            client.execute(statement)
        except (ch_errors.Error, OSError, EOFError) as exc:
            raise MigrationError(
                f"{migration.name} statement {index} failed: {exc}\n{statement}"
            ) from exc
    client.execute(
        f"INSERT INTO {MIGRATIONS_TABLE} (name, applied_at) SELECT %(name)s, now()",
        {"name": migration.name},
    )


def apply_migrations(settings: ClickHouseSettings) -> list[str]:
    """Create the database, then apply every shipped migration not yet recorded, in order.

    Returns the names applied by this call (empty when the schema was already current).
    """
    database = _database_name(settings)
    migrations = load_migrations()
    bootstrap = clickhouse_client(settings, database=False)
    try:
        bootstrap.execute(f"CREATE DATABASE IF NOT EXISTS {database}")
    finally:
        bootstrap.disconnect()
    client = clickhouse_client(settings)
    try:
        client.execute(_CREATE_MIGRATIONS_TABLE)
        done = {str(row[0]) for row in client.execute(f"SELECT name FROM {MIGRATIONS_TABLE}")}
        applied: list[str] = []
        for migration in migrations:
            if migration.name not in done:
                _apply_one(client, migration)
                applied.append(migration.name)
        return applied
    finally:
        client.disconnect()


# ---- SQL this server version stores badly ------------------------------------------------------

_VIEW_NAME = re.compile(r"^\s*CREATE\s+(?:MATERIALIZED\s+)?VIEW\s+(?:IF\s+NOT\s+EXISTS\s+)?"
                        r"([A-Za-z_][A-Za-z0-9_.]*)", re.IGNORECASE)
_DROP_NAME = re.compile(r"^\s*DROP\s+(?:TABLE|VIEW)\s+(?:IF\s+EXISTS\s+)?([A-Za-z_][A-Za-z0-9_.]*)",
                        re.IGNORECASE)
_ALIAS = re.compile(r"\bAS\s+([A-Za-z_][A-Za-z0-9_]*)", re.IGNORECASE)
_SUBQUERY_START = re.compile(r"\(\s*SELECT\b", re.IGNORECASE)


def view_name(statement: str) -> str | None:
    """The view a ``CREATE [MATERIALIZED] VIEW`` statement creates, else None."""
    match = _VIEW_NAME.match(statement)
    return match[1] if match else None


def dropped_name(statement: str) -> str | None:
    """The table or view a ``DROP`` statement removes, else None."""
    match = _DROP_NAME.match(statement)
    return match[1] if match else None


def subquery_alias_collisions(statement: str) -> set[str]:
    """Aliases given both to a sub-query and to a column in one statement.

    ClickHouse 18.16 writes such a view back with the sub-query replaced by its alias
    (``FROM accepted``), and after a server restart the view no longer resolves. Parentheses are
    matched on the statement text (no string literal in our DDL holds one).
    """
    openers: list[int] = []
    match_of: dict[int, int] = {}
    for index, char in enumerate(statement):
        if char == "(":
            openers.append(index)
        elif char == ")" and openers:
            match_of[index] = openers.pop()
    subquery_aliases: set[str] = set()
    column_aliases: set[str] = set()
    for found in _ALIAS.finditer(statement):
        before = statement[: found.start()].rstrip()
        closing = len(before) - 1
        opener = match_of.get(closing) if before.endswith(")") else None
        if opener is not None and _SUBQUERY_START.match(statement, opener):
            subquery_aliases.add(found[1].lower())
        else:
            column_aliases.add(found[1].lower())
    return subquery_aliases & column_aliases


def current_views(migrations: list[Migration]) -> dict[str, str]:
    """Each view's statement as the migrations leave it (a later DROP or CREATE wins)."""
    views: dict[str, str] = {}
    for migration in migrations:
        for statement in migration.statements:
            dropped = dropped_name(statement)
            if dropped is not None:
                views.pop(dropped, None)
            created = view_name(statement)
            if created is not None:
                views[created] = statement
    return views
