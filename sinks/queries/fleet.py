"""The fleet tax/ESG read model (E4): energy, renewable share and internal cost of a fleet by
depot site and month, from ``fleet_esg_monthly`` (migration 0008).

``read_fleet_report`` takes a ``clickhouse_driver.Client``; ``chargemesh fleet report`` prints
what it returns.
"""

from __future__ import annotations

import re
from typing import Any

from chargemesh.sinks.queries import ReadModelError, keyed_rows
from clickhouse_driver import Client

REPORT_ROWS_MAX = 10_000
FLEET_ID_CHARS_MAX = 200
MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
REPORT_COLUMNS = (
    "site_id", "month", "currency", "sessions", "final_sessions", "energy_import_wh",
    "energy_export_wh", "renewable_wh", "renewable_share", "internal_amount",
)


def check_report_args(fleet_id: str, month: str | None) -> None:
    """``ReadModelError`` unless the fleet id is 1..FLEET_ID_CHARS_MAX characters and ``month``
    (if given) is YYYY-MM."""
    if not fleet_id or len(fleet_id) > FLEET_ID_CHARS_MAX:
        raise ReadModelError(f"fleet id must be 1..{FLEET_ID_CHARS_MAX} characters")
    if month is not None and MONTH.match(month) is None:
        raise ReadModelError(f"--month {month!r} is not YYYY-MM")


def read_fleet_report(client: Client, fleet_id: str,
                      month: str | None) -> list[dict[str, Any]]:
    """One row per (site, month, currency) of ``fleet_id``, months in order."""
    check_report_args(fleet_id, month)
    where = "fleet_id = %(fleet)s" + (" AND month = %(month)s" if month else "")
    sql = (f"SELECT {', '.join(REPORT_COLUMNS)} FROM fleet_esg_monthly WHERE {where} "
           "ORDER BY month, site_id, currency LIMIT %(limit)s")
    return keyed_rows(client, sql, {"fleet": fleet_id, "month": month or "",
                                    "limit": REPORT_ROWS_MAX}, REPORT_COLUMNS)
