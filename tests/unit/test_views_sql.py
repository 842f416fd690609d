"""Views are written in SQL that ClickHouse 18.16 stores faithfully (pure: no server needed).

18.16 writes a view whose sub-query alias is also a column alias back with the sub-query
replaced by that alias; the view then fails after every server restart
(tests/integration/test_restart.py shows the real server surviving a restart)."""

from __future__ import annotations

from chargemesh.sinks.migrate import (
    current_views,
    load_migrations,
    subquery_alias_collisions,
    view_name,
)


def test_no_view_in_force_gives_a_subquery_and_a_column_the_same_alias() -> None:
    views = current_views(load_migrations())
    assert "reprices_current" in views and len(views) >= 10
    collisions = {name: subquery_alias_collisions(sql) for name, sql in views.items()}
    assert {name: found for name, found in collisions.items() if found} == {}


def test_the_check_finds_the_view_that_broke_on_restart() -> None:
    (first,) = [m for m in load_migrations() if m.name == "0003_sessions.sql"]
    broken = [s for s in first.statements if view_name(s) == "reprices_current"]
    assert len(broken) == 1
    assert subquery_alias_collisions(broken[0]) == {"accepted"}


def test_a_function_call_alias_is_not_taken_for_a_subquery() -> None:
    sql = ("CREATE VIEW v AS SELECT toUInt8(count() > 0) AS seen FROM "
           "(SELECT * FROM t) AS rows_seen")
    assert subquery_alias_collisions(sql) == set()
    assert subquery_alias_collisions(sql.replace("rows_seen", "seen")) == {"seen"}
