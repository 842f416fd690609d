"""E5 mobile charger on the station's ledger: the rate authority follows the truck. Pure.

A dispatched charging truck holds an itinerant station credential (role ``MOBILE_STATION``; only
that role may sign a ``MobileStationRelocated``, ingress refuses any other). It publishes a
calendar like any station; each signed location update then names the place of delivery: its
jurisdiction, the rate authority there, a tariff that authority filed for that jurisdiction and
the posted price in that tariff's currency. The ledger checks the update and moves the
station's calendar to it, so every later order is checked against, and every session started
there settles under, the filed tariff (currency, tax, adders, rounding) of the place of delivery
at handshake time (``sessions`` reads the calendar's tariff when the handshake arrives).

Refused with a reason: an authority that is not a recognised rate authority, a jurisdiction
whose authority filed no tariff for it, a jurisdiction outside the credential's
``operating_jurisdictions`` attribute (when it has one), a truck credentialed under another
authority without reciprocity with the new one (P1), a move while a session is in progress, an
update older than the last one. Bookings not yet started were made for the old place: they are
released ``STATION_RELOCATED``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from chargemesh.processors.decisions import Decision
from chargemesh.processors.governance import TrustStore
from chargemesh.processors.ledger import sessions
from chargemesh.processors.ledger.state import (
    Command,
    GovernanceView,
    Handler,
    LedgerState,
    _emit,
    released,
    roaming_problem,
)
from chargemesh.processors.reasons import Reason, Rejection
from chargemesh.processors.statuses import ReservationStatus

LATITUDE_MICRODEG_MAX = 90_000_000
LONGITUDE_MICRODEG_MAX = 180_000_000
# The signed time of the move and the event's own time may differ this much (clock skew).
CLOCK_SKEW_MS_MAX = 2 * 60_000
OPERATING_JURISDICTIONS = "operating_jurisdictions"
EXTENSION_FIELDS = frozenset({"dispatch_id", "latitude_microdeg", "longitude_microdeg"})


def location(state: LedgerState) -> dict[str, Any] | None:
    """Where the truck last signed it delivers (None: only its calendar's place)."""
    found: dict[str, Any] | None = state.extra.get("mobile_location")
    return found


def relocate(state: LedgerState, cmd: Command, view: GovernanceView,
               out: list[Decision]) -> Rejection | None:
    p = cmd.payload
    cal = state.calendar
    if cal is None:
        return Rejection(Reason.NO_CALENDAR,
                         f"station {state.station_id} has published no calendar")
    problem = (_move_problem(state, cmd) or _place_problem(state, cmd, view)
               or _itinerary_problem(cmd, view))
    if problem is not None:
        return problem
    tariff = view.tariffs[p["tariff_id"]]
    for res in sorted(state.reservations.values(), key=lambda r: r.seq):
        if res.status == ReservationStatus.ACTIVE:
            _emit(state, out, released(state, res, Reason.STATION_RELOCATED,
                                       f"moved to {p['jurisdiction']}"))
    cal.update(rate_authority_id=p["rate_authority_id"], jurisdiction=p["jurisdiction"],
               tariff_id=p["tariff_id"], currency=tariff["currency"],
               posted_rate_per_kwh=p["posted_rate_per_kwh"],
               filed_ceiling_per_kwh=tariff["energy_rate_ceiling_per_kwh"])
    state.extra["mobile_location"] = {
        "dispatch_id": p["dispatch_id"], "latitude_microdeg": p["latitude_microdeg"],
        "longitude_microdeg": p["longitude_microdeg"], "jurisdiction": p["jurisdiction"],
        "rate_authority_id": p["rate_authority_id"], "tariff_id": p["tariff_id"],
        "relocated_at_ms": p["relocated_at_ms"], "event_id": cmd.event_id}
    return None


def _move_problem(state: LedgerState, cmd: Command) -> Rejection | None:
    p, cal = cmd.payload, state.calendar or {}
    if cmd.author_id != cal.get("station_credential_id"):
        return Rejection(Reason.NOT_THE_STATIONS_CREDENTIAL, f"the calendar was published by "
                         f"{cal.get('station_credential_id')}")
    if abs(p["relocated_at_ms"] - cmd.occurred_at_ms) > CLOCK_SKEW_MS_MAX:
        return Rejection(Reason.INVALID_TIME, "relocated_at_ms is not the event's own time")
    last = location(state)
    if last is not None and p["relocated_at_ms"] <= last["relocated_at_ms"]:
        return Rejection(Reason.STALE_LOCATION,
                         f"the truck moved at {last['relocated_at_ms']} already")
    if abs(p["latitude_microdeg"]) > LATITUDE_MICRODEG_MAX or abs(
            p["longitude_microdeg"]) > LONGITUDE_MICRODEG_MAX:
        return Rejection(Reason.INVALID_LOCATION, "latitude/longitude out of range")
    busy = [s["session_id"] for s in sessions.sessions(state).values()
            if s["status"] in sessions.OPEN]
    if busy:
        return Rejection(Reason.SESSION_IN_PROGRESS, f"close out {', '.join(sorted(busy)[:3])} "
                         "before moving")
    return None


def _place_problem(state: LedgerState, cmd: Command, view: GovernanceView) -> Rejection | None:
    """The place's rate authority is recognised and filed this tariff for this jurisdiction."""
    p, at_ms = cmd.payload, cmd.occurred_at_ms
    authority, jurisdiction = p["rate_authority_id"], p["jurisdiction"]
    if not view.is_rate_authority(authority, at_ms):
        return Rejection(Reason.UNRECOGNISED_RATE_AUTHORITY,
                         f"{authority} is not a recognised rate authority")
    if isinstance(view, TrustStore):
        principal = view.principals.get(authority)
        if principal is not None and jurisdiction not in principal.jurisdictions:
            return Rejection(Reason.NOT_THE_JURISDICTIONS_AUTHORITY, f"{authority} governs "
                             f"{', '.join(sorted(principal.jurisdictions))}, not {jurisdiction}")
    tariff = view.tariffs.get(p["tariff_id"])
    if tariff is None or tariff["rate_authority_id"] != authority or (
            tariff["jurisdiction"] != jurisdiction):
        filed = sorted(t["tariff_id"] for t in view.tariffs.values()
                       if t["rate_authority_id"] == authority
                       and t["jurisdiction"] == jurisdiction)[:3]
        return Rejection(Reason.NO_TARIFF_IN_JURISDICTION, f"{authority} filed no tariff "
                         f"{p['tariff_id']} for {jurisdiction} (filed there: "
                         f"{', '.join(filed) or 'none'})")
    if tariff["station_ids"] and state.station_id not in tariff["station_ids"]:
        return Rejection(Reason.UNKNOWN_TARIFF, f"{p['tariff_id']} does not cover this station")
    if not 0 < p["posted_rate_per_kwh"] <= Decimal(tariff["energy_rate_ceiling_per_kwh"]):
        return Rejection(Reason.ABOVE_FILED_CEILING,
                         f"posted {p['posted_rate_per_kwh']} is not within "
                         f"the filed ceiling {tariff['energy_rate_ceiling_per_kwh']}")
    return None


def _itinerary_problem(cmd: Command, view: GovernanceView) -> Rejection | None:
    """The truck's own credential may operate there: listed jurisdictions, and reciprocity
    between its home authority and the place's (P1) when they differ."""
    p = cmd.payload
    if isinstance(view, TrustStore):
        principal = view.principals.get(cmd.author_id)
        allowed = principal.attribute(OPERATING_JURISDICTIONS) if principal else ""
        if allowed and p["jurisdiction"] not in allowed.split(","):
            return Rejection(Reason.JURISDICTION_NOT_PERMITTED, f"{cmd.author_id} operates in "
                             f"{allowed}, not {p['jurisdiction']}")
    return roaming_problem(view, cmd.author_id, p["rate_authority_id"], cmd.occurred_at_ms)


def dispatched(previous: Handler) -> Handler:
    """Wraps an order handler: a claim naming a dispatch must name the truck's current one."""

    def handle(state: LedgerState, cmd: Command, view: GovernanceView,
               out: list[Decision]) -> Rejection | None:
        ext = cmd.payload["claim"].get("extension")
        if isinstance(ext, dict) and set(ext) == EXTENSION_FIELDS and ext["dispatch_id"]:
            here = location(state)
            if here is None or here["dispatch_id"] != ext["dispatch_id"]:
                return Rejection(Reason.WRONG_DISPATCH, f"the truck is on dispatch "
                                 f"{here['dispatch_id'] if here else 'none'!r}, the claim names "
                                 f"{ext['dispatch_id']!r}")
        return previous(state, cmd, view, out)

    return handle
