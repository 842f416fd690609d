"""E4 Fleet depot: a fleet charging its own vehicles at its own depot. Pure.

When the vehicle's and the station's credentials carry the same ``fleet_id`` attribute (both
issued to the fleet by a delegated issuer, so the attribute is vouched for, not self-declared),
no money changes hands: the settlement is admitted as kind ``INTERNAL_ACCOUNTING``. It keeps
every line of the filed tariff (energy, adders, tax, and the V2G export credit if any) for cost
allocation, plus one ``ADJUSTMENT`` line that eliminates their sum, so ``total_amount`` is 0
(no payment due) and the lines still add up to it exactly. It is signed, co-signed and
finalised like any settlement and cites the same evidence: the lineage is complete.

Next to it the ledger records ``FleetAccountingRecorded``: the energy, its renewable share and
the internal cost, allocated to the fleet and depot site, from which the tax/ESG report is
built (ClickHouse ``fleet_accounting``, ``fleet_esg_monthly``; ``chargemesh fleet report``).

Credential attributes read (all optional but ``fleet_id``):
* ``fleet_id`` on both credentials;
* ``site_id`` on the station credential (default: the station id);
* ``renewable_share_permille`` on the station credential, 0..1000: the share of the depot's
  supply of certified renewable origin. Without it, energy under a tariff that files a
  renewable-content adder counts as renewable and other energy does not. A malformed value is
  ignored (treated as absent), never trusted.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from chargemesh.processors.governance import TrustStore
from chargemesh.processors.ledger.state import GovernanceView
from chargemesh.processors.settlement import Tariff, line
from chargemesh.processors.statuses import LineKind, SettlementKind

FLEET_ATTRIBUTE = "fleet_id"
SITE_ATTRIBUTE = "site_id"
RENEWABLE_ATTRIBUTE = "renewable_share_permille"
PERMILLE = 1_000
INTERNAL = SettlementKind.INTERNAL_ACCOUNTING
CHARGE = SettlementKind.CHARGE
ELIMINATION = LineKind.ADJUSTMENT
ATTRIBUTE_CHARS_MAX = 200


def _attribute(view: GovernanceView, credential_id: str, name: str) -> str:
    if not isinstance(view, TrustStore):
        return ""
    principal = view.principals.get(credential_id)
    return principal.attribute(name)[:ATTRIBUTE_CHARS_MAX] if principal is not None else ""


def _permille(raw: str) -> int | None:
    if not raw.isdigit() or int(raw) > PERMILLE:
        return None
    return int(raw)


def start(s: dict[str, Any], station_id: str, view: GovernanceView) -> None:
    """At the handshake: is this one fleet's vehicle at the same fleet's station?"""
    vehicle_fleet = _attribute(view, s["vehicle_credential_id"], FLEET_ATTRIBUTE)
    station_fleet = _attribute(view, s["station_credential_id"], FLEET_ATTRIBUTE)
    if not vehicle_fleet or vehicle_fleet != station_fleet:
        s["fleet"] = None
        return
    station_credential = s["station_credential_id"]
    s["fleet"] = {
        "fleet_id": vehicle_fleet,
        "site_id": _attribute(view, station_credential, SITE_ATTRIBUTE) or station_id,
        "renewable_share_permille": _permille(
            _attribute(view, station_credential, RENEWABLE_ATTRIBUTE)),
    }


def internal_entry(s: dict[str, Any], lines: list[dict[str, Any]],
                   total: Decimal) -> tuple[str, list[dict[str, Any]], Decimal]:
    """(kind, lines, total): CHARGE unchanged, or the internal entry with its elimination."""
    fleet = s.get("fleet")
    if not fleet:
        return CHARGE, lines, total
    if total != 0:
        lines = [*lines, line(ELIMINATION, f"internal accounting entry: fleet {fleet['fleet_id']} "
                              f"holds vehicle and station credentials; {total} allocated to "
                              f"site {fleet['site_id']}, no payment due", 0, Decimal(0), -total)]
    return INTERNAL, lines, sum((ln["amount"] for ln in lines), Decimal(0))


def renewable_wh(tariff: Tariff, import_wh: int, share_permille: int | None) -> int:
    if share_permille is not None:
        return import_wh * share_permille // PERMILLE
    return import_wh if tariff.renewable_adder_per_kwh > 0 else 0


def accounting_entry(s: dict[str, Any], settlement: dict[str, Any]) -> dict[str, Any] | None:
    """The FleetAccountingRecorded payload for an internal settlement (None for any other)."""
    fleet = s.get("fleet")
    if not fleet or settlement["kind"] != INTERNAL:
        return None
    ident = settlement["identity"]
    tariff = Tariff(**s["tariff"])
    allocated = sum((ln["amount"] for ln in settlement["lines"] if ln["kind"] != ELIMINATION),
                    Decimal(0))
    return {
        "settlement_id": settlement["settlement_id"], "session_id": settlement["session_id"],
        "fleet_id": fleet["fleet_id"], "site_id": fleet["site_id"],
        "station_id": ident["station_id"], "connector_id": ident["connector_id"],
        "station_credential_id": s["station_credential_id"],
        "vehicle_credential_id": s["vehicle_credential_id"],
        "rate_authority_id": ident["rate_authority_id"], "jurisdiction": ident["jurisdiction"],
        "currency": settlement["currency"],
        "energy_import_wh": settlement["energy_import_wh"],
        "energy_export_wh": settlement["energy_export_wh"],
        "renewable_wh": renewable_wh(tariff, settlement["energy_import_wh"],
                                     fleet["renewable_share_permille"]),
        "internal_amount": allocated, "delivered_from_ms": s["started_at_ms"],
        "delivered_until_ms": s["close_out"]["closed_at_ms"],
        "recorded_at_ms": settlement["admitted_at_ms"],
    }
