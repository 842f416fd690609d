"""E3 V2G: bidirectional metering and two-sided settlement on the station's ledger. Pure.

The same session as any other (M9: a schema extension, not a separate system), with a second
meter register:

* the connector handshake names the meter's cumulative export register at the start
  (``meter_start_export_wh``); every reading and the close-out carry the register
  (``cumulative_export_wh`` / ``final_export_wh``). The register never goes backwards, may grow
  only on a connector its calendar declares ``bidirectional``, only in a zone whose grid
  program names an operator (export reaches the bulk grid: M7), and import plus export between
  two readings must fit the connector's power (one inverter carries both directions);
* a session that exported energy is not settled at close-out: export is paid at the bulk
  clearing price, and only the zone's grid operator can state it, in its co-signature
  (``SettlementCoSigned.clearing_price_per_kwh``). Until that co-signature arrives the session
  stays CLOSED_OUT with no settlement (ClickHouse: ``sessions_awaiting_settlement``);
* the settlement then has the import lines of the filed tariff (energy, adders, tax) and one
  ``V2G_EXPORT_CREDIT`` line: the exported Wh at the clearing price, rounded once by the rate
  authority's rule, negative. The lines still sum exactly to the total, which is negative when
  the vehicle exported more value than it imported (a payout to the vehicle).

Tax applies to the import lines only (the tariff's tax is a sales tax on delivered energy).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from chargemesh.checks import InvariantError, ensure
from chargemesh.processors.reasons import Reason, Rejection
from chargemesh.processors.settlement import WH_PER_KWH, Tariff, line
from chargemesh.processors.statuses import LineKind

EXPORT_CREDIT = LineKind.V2G_EXPORT_CREDIT
# A bulk clearing price above this (per kWh, in the rate authority's currency) is a typo or an
# attack, not a market outcome: the default when the filed tariff declares no cap of its own
# (``TariffFiled.clearing_price_cap_per_kwh``: the rate authority declares it per currency).
CLEARING_PRICE_PER_KWH_MAX = Decimal(100)


def clearing_price_cap(tariff: dict[str, Any]) -> Decimal:
    """The clearing-price cap of the session's filed tariff, in its currency (M3, E3)."""
    declared = Decimal(tariff.get("clearing_price_cap_per_kwh") or 0)
    return declared if declared > 0 else CLEARING_PRICE_PER_KWH_MAX


def start(s: dict[str, Any], connector: dict[str, Any], handshake: dict[str, Any]) -> None:
    """Remember the connector's direction and the export register at the handshake."""
    s["bidirectional"] = bool(connector.get("bidirectional", False))
    s["meter_start_export_wh"] = int(handshake.get("meter_start_export_wh", 0))
    s["export_wh_last"] = s["meter_start_export_wh"]


def start_problem(handshake: dict[str, Any]) -> Rejection | None:
    if int(handshake.get("meter_start_export_wh", 0)) < 0:
        return Rejection(Reason.INVALID_METER_START, "meter_start_export_wh must not be negative")
    return None


def _start_wh(s: dict[str, Any]) -> int:
    return int(s.get("meter_start_export_wh", 0))


def _last_wh(s: dict[str, Any]) -> int:
    return int(s.get("export_wh_last", _start_wh(s)))


def export_problem(s: dict[str, Any], export_wh: int, import_delta_wh: int,
                   ceiling_wh: Decimal) -> Rejection | None:
    """Checks a reading's (or the close-out's) export register against the last one accepted.
    ``ceiling_wh``: the most energy the connector could have moved since then."""
    last_wh = _last_wh(s)
    if export_wh < last_wh:
        return Rejection(Reason.METER_WENT_BACKWARDS,
                         f"export register {export_wh} Wh < {last_wh} Wh")
    exported_wh = export_wh - last_wh
    if exported_wh == 0:
        return None
    if not s.get("bidirectional", False):
        return Rejection(Reason.NOT_BIDIRECTIONAL, f"{s['connector_id']} is not a bidirectional "
                         f"connector: it cannot export {exported_wh} Wh")
    if not s.get("grid_operator_ids"):
        return Rejection(Reason.NO_GRID_PROGRAM, "export reaches the bulk grid: no grid program in "
                         "this zone names an operator to co-sign and price it")
    if import_delta_wh + exported_wh > ceiling_wh:
        return Rejection(Reason.IMPLAUSIBLE_READING,
                         f"{import_delta_wh} Wh in and {exported_wh} Wh "
                         f"out exceed {s['power_w']} W")
    return None


def record(s: dict[str, Any], export_wh: int) -> None:
    """An accepted reading's export register (after :func:`export_problem` passed)."""
    s["export_wh_last"] = export_wh


def exported_wh(s: dict[str, Any]) -> int:
    """Energy the session exported: the close-out's register minus the handshake's."""
    close_out = s.get("close_out") or {}
    return int(close_out.get("final_export_wh", _start_wh(s))) - _start_wh(s)


def awaits_clearing_price(s: dict[str, Any]) -> bool:
    """Closed out, exported energy, and no grid operator has priced it yet."""
    return (s.get("close_out") is not None and exported_wh(s) > 0
            and s.get("clearing_price_per_kwh") is None)


def clearing_price_problem(s: dict[str, Any], payload: dict[str, Any],
                           settlement_id: str) -> Rejection | None:
    """The grid operator's co-signature that prices the export (author already checked)."""
    if payload["settlement_id"] != settlement_id:
        return Rejection(Reason.UNKNOWN_SETTLEMENT, f"{payload['settlement_id']} is not this "
                         f"session's ({settlement_id})")
    if bytes(payload["close_out_event_hash"]).hex() != s["close_out"]["event_hash"]:
        return Rejection(Reason.CLOSE_OUT_MISMATCH, "co-signature is over another close-out")
    # the tariff version in force at the close-out (the export is priced then)
    tariff = (s.get("tariff_schedule") or [s.get("tariff") or {}])[-1]
    price, cap = payload["clearing_price_per_kwh"], clearing_price_cap(tariff)
    if not Decimal(0) <= price <= cap:
        return Rejection(Reason.INVALID_CLEARING_PRICE, f"clearing price {price}/kWh is outside "
                         f"[0, {cap}] {tariff.get('currency', '')}")
    return None


def price(s: dict[str, Any], clearing_price_per_kwh: Decimal) -> None:
    s["clearing_price_per_kwh"] = clearing_price_per_kwh


def export_credit_line(tariff: Tariff, exported: int, clearing_price_per_kwh: Decimal,
                       from_ms: int, until_ms: int) -> dict[str, Any]:
    """The export credit: rounded once by the authority's rule on its magnitude, negative."""
    ensure(exported > 0, f"an export credit needs exported energy, got {exported} Wh")
    credit = tariff.round(Decimal(exported) * clearing_price_per_kwh / WH_PER_KWH)
    credit_line: dict[str, Any] = line(
        EXPORT_CREDIT, f"{exported} Wh exported at the clearing price {clearing_price_per_kwh}"
        "/kWh", exported, clearing_price_per_kwh, -credit, from_ms, until_ms)
    return credit_line


def with_export_credit(tariff: Tariff, s: dict[str, Any], lines: list[dict[str, Any]],
                       total: Decimal) -> tuple[list[dict[str, Any]], Decimal]:
    """Import lines plus the export credit; the total is still the exact sum of the lines."""
    exported = exported_wh(s)
    if exported <= 0:
        return lines, total
    clearing = s.get("clearing_price_per_kwh")
    if not isinstance(clearing, Decimal):
        raise InvariantError(f"{s['session_id']} exported {exported} Wh but is not priced")
    credit = export_credit_line(tariff, exported, clearing, s["started_at_ms"],
                                s["close_out"]["closed_at_ms"])
    lines = [*lines, credit]
    return lines, sum((ln["amount"] for ln in lines), Decimal(0))
