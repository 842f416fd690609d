"""Identity binding (issue 15, hole 4): a station acts only inside its own credential. Pure.

What the ledger binds, and the reason it refuses with otherwise:

* a calendar's jurisdiction is the station credential's (an itinerant ``MOBILE_STATION``
  credential's may also be one of its ``operating_jurisdictions``), the filed tariff's and its
  rate authority's: ``JURISDICTION_MISMATCH``;
* every connector of a calendar registers a hardware id, once; the calendar is signed by the
  station credential, so its hardware ids are registered under that credential (a later
  calendar of the same credential re-registers them): ``INVALID_CALENDAR``;
* an identity (order, handshake, swap) names the calendar's jurisdiction and rate authority,
  which follow a mobile charger's signed relocation (``embodiments.mobile`` moves the
  calendar): ``JURISDICTION_MISMATCH``, ``RATE_AUTHORITY_MISMATCH``;
* an identity that names a connector names the hardware id registered for it (one that names
  none names no hardware): ``UNKNOWN_CONNECTOR_HARDWARE``;
* the vehicle id kind follows the vehicle credential: a credential carrying a ``vin``
  attribute is a VIN credential, so the kind is ``VIN`` and the vehicle id is that VIN; any
  other vehicle credential is pseudonymous, so the kind is ``PSEUDONYM`` and the vehicle id is
  its subject id (``UNKNOWN`` is never admitted): ``VEHICLE_ID_KIND_MISMATCH``.

The trust state is read through the ledger's ``GovernanceView``; a view that is not a
``TrustStore`` cannot show a credential's scope, so the checks fail closed.
"""

from __future__ import annotations

from typing import Any

from chargemesh.processors.decisions import Decision
from chargemesh.processors.governance import Principal, TrustStore
from chargemesh.processors.ledger.state import Command, GovernanceView, Handler, LedgerState
from chargemesh.processors.reasons import Reason, Rejection

VIN_ATTRIBUTE = "vin"
OPERATING_JURISDICTIONS = "operating_jurisdictions"
MOBILE_STATION_ROLE = "MOBILE_STATION"
VIN_KIND = "VIN"
PSEUDONYM_KIND = "PSEUDONYM"
HARDWARE_ID_CHARS_MAX = 128
JURISDICTIONS_LISTED_MAX = 16  # of an operating_jurisdictions attribute


def _principal(view: GovernanceView, principal_id: str) -> Principal | None:
    if not isinstance(view, TrustStore):
        return None
    return view.principals.get(principal_id)


def station_jurisdictions(view: GovernanceView, station_credential_id: str) -> frozenset[str]:
    """Where a station credential may publish a calendar: its own jurisdiction, and for an
    itinerant (mobile) credential the ``operating_jurisdictions`` it lists."""
    station = _principal(view, station_credential_id)
    if station is None:
        return frozenset()
    places = set(station.jurisdictions)
    if MOBILE_STATION_ROLE in station.roles:
        listed = station.attribute(OPERATING_JURISDICTIONS).split(",")
        places.update(j for j in listed[:JURISDICTIONS_LISTED_MAX] if j)
    return frozenset(places)


def calendar_problem(view: GovernanceView, station_credential_id: str,
                     p: dict[str, Any]) -> Rejection | None:
    """A calendar (payload ``p``, its tariff already known filed) binds station credential,
    tariff and rate authority to one jurisdiction and registers each connector's hardware."""
    jurisdiction = p["jurisdiction"]
    allowed = station_jurisdictions(view, station_credential_id)
    if jurisdiction not in allowed:
        return Rejection(Reason.JURISDICTION_MISMATCH, f"{station_credential_id} is credentialed "
                         f"for {', '.join(sorted(allowed)) or 'nothing'}, not {jurisdiction!r}")
    tariff = view.tariffs[p["tariff_id"]]
    if tariff["jurisdiction"] != jurisdiction:
        return Rejection(Reason.JURISDICTION_MISMATCH, f"tariff {p['tariff_id']} is filed for "
                         f"{tariff['jurisdiction']}, not {jurisdiction!r}")
    authority = _principal(view, p["rate_authority_id"])
    if authority is None or jurisdiction not in authority.jurisdictions:
        held = sorted(authority.jurisdictions) if authority else []
        return Rejection(Reason.JURISDICTION_MISMATCH, f"{p['rate_authority_id']} governs "
                         f"{', '.join(held) or 'nothing'}, not {jurisdiction!r}")
    seen: set[str] = set()
    for c in p["connectors"]:
        hardware = c["hardware_id"]
        if not 0 < len(hardware) <= HARDWARE_ID_CHARS_MAX or hardware in seen:
            return Rejection(Reason.INVALID_CALENDAR, f"connector {c['connector_id']}: hardware "
                             f"id must be 1..{HARDWARE_ID_CHARS_MAX} chars and registered once")
        seen.add(hardware)
    return None


def identity_problem(calendar: dict[str, Any], ident: dict[str, Any],
                     view: GovernanceView) -> Rejection | None:
    """An identity is bound to the station's calendar (jurisdiction, rate authority, the
    connector's registered hardware id) and to its vehicle credential (id kind)."""
    if ident["rate_authority_id"] != calendar["rate_authority_id"]:
        return Rejection(Reason.RATE_AUTHORITY_MISMATCH, f"station files under "
                         f"{calendar['rate_authority_id']}, identity names "
                         f"{ident['rate_authority_id']}")
    if ident["jurisdiction"] != calendar["jurisdiction"]:
        return Rejection(Reason.JURISDICTION_MISMATCH, f"the station delivers in "
                         f"{calendar['jurisdiction']}, the identity says "
                         f"{ident['jurisdiction']!r}")
    hardware = connector_problem(calendar, ident)
    if hardware is not None:
        return hardware
    return vehicle_id_problem(view, ident)


def connector_problem(calendar: dict[str, Any], ident: dict[str, Any]) -> Rejection | None:
    connector_id, hardware = ident["connector_id"], ident["connector_hardware_id"]
    registered = calendar["connectors"].get(connector_id) if connector_id else None
    if connector_id and registered is None:
        return None  # an unknown connector is refused by the caller (UNKNOWN_CONNECTOR)
    expected = registered.get("hardware_id", "") if registered else ""
    if hardware != expected:
        return Rejection(Reason.UNKNOWN_CONNECTOR_HARDWARE,
                         f"hardware {hardware!r} is not registered for connector "
                         f"{connector_id or '(none)'!r} (registered: {expected!r})")
    return None


def vehicle_id_problem(view: GovernanceView, ident: dict[str, Any]) -> Rejection | None:
    """The id kind follows the vehicle credential: VIN (its ``vin`` attribute) or PSEUDONYM."""
    vehicle = _principal(view, ident["vehicle_credential_id"])
    if vehicle is None:
        return Rejection(Reason.VEHICLE_ID_KIND_MISMATCH,
                         f"{ident['vehicle_credential_id']} is not a known vehicle credential")
    vin = vehicle.attribute(VIN_ATTRIBUTE)
    kind, vehicle_id = (VIN_KIND, vin) if vin else (PSEUDONYM_KIND, vehicle.subject_id)
    if ident["vehicle_id_kind"] != kind or ident["vehicle_id"] != vehicle_id:
        return Rejection(Reason.VEHICLE_ID_KIND_MISMATCH,
                         f"{vehicle.principal_id} identifies its vehicle as {kind} "
                         f"{vehicle_id!r}, the identity says {ident['vehicle_id_kind']} "
                         f"{ident['vehicle_id']!r}")
    return None


# ---- the ledger's commands, bound (composed in ``ledger.commands``) ---------------------------


CALENDAR_EVENT = "chargemesh.capacity.v1.SlotCalendarPublished"
IDENTITY_EVENTS = {  # event type -> signed by the calendar's station credential
    "chargemesh.orders.v1.PostedPriceAccepted": False,
    "chargemesh.orders.v1.WalkUpRequested": False,
    "chargemesh.orders.v1.BidPlaced": False,
    "chargemesh.session.v1.ConnectorHandshakeCompleted": True,
    "chargemesh.session.v1.PackSwapCompleted": True,
}


def judge(state: LedgerState, cmd: Command, view: GovernanceView) -> Rejection | None:
    """The binding of a market input, before the ledger applies anything (``ledger.step`` calls
    it ahead of the clock): a refused input stays out of the lineage log and causes nothing."""
    if cmd.event_type == CALENDAR_EVENT:
        return _calendar_check(cmd, view)
    station_signed = IDENTITY_EVENTS.get(cmd.event_type)
    if station_signed is None:
        return None
    return _identity_check(state, cmd, view, station_signed)


def _calendar_check(cmd: Command, view: GovernanceView) -> Rejection | None:
    p = cmd.payload
    tariff = view.tariffs.get(p["tariff_id"])
    # Bound once the handler's first checks hold (else it refuses UNKNOWN_TARIFF or
    # UNRECOGNISED_RATE_AUTHORITY itself).
    if tariff is not None and tariff["rate_authority_id"] == p["rate_authority_id"] and (
            view.is_rate_authority(p["rate_authority_id"], cmd.occurred_at_ms)):
        return calendar_problem(view, cmd.author_id, p)
    return None


def _identity_check(state: LedgerState, cmd: Command, view: GovernanceView,
                    station_signed: bool) -> Rejection | None:
    cal = state.calendar
    if cal is None:  # the handler refuses NO_CALENDAR (or UNKNOWN_RESERVATION)
        return None
    if station_signed and cmd.author_id != cal.get("station_credential_id"):
        return Rejection(Reason.NOT_THE_STATIONS_CREDENTIAL, f"the calendar's connectors are "
                         f"registered under {cal.get('station_credential_id')}, not "
                         f"{cmd.author_id}")
    return identity_problem(cal, cmd.payload["identity"], view)


def bound_calendar(previous: Handler) -> Handler:
    """Wraps ``publish_calendar``: the calendar binds its jurisdiction and connector hardware."""

    def handle(state: LedgerState, cmd: Command, view: GovernanceView,
               out: list[Decision]) -> Rejection | None:
        return _calendar_check(cmd, view) or previous(state, cmd, view, out)

    return handle


def bound_identity(previous: Handler, station_signed: bool = False) -> Handler:
    """Wraps a handler of a payload with an ``identity`` (orders; with ``station_signed`` the
    handshake and the swap, which must be signed by the calendar's station credential)."""

    def handle(state: LedgerState, cmd: Command, view: GovernanceView,
               out: list[Decision]) -> Rejection | None:
        return (_identity_check(state, cmd, view, station_signed)
                or previous(state, cmd, view, out))

    return handle
