"""E1 wireless dynamic charging on the road operator's ledger: trips, segment passes, settlement.
Pure.

Who is who:

* a **road operator** is an issuer (delegated ``STATION`` by an authority); it credentials each
  electrified **segment** as a ``STATION`` whose subject is the segment's station id and whose
  attributes bind it to the road: ``embodiment=WIRELESS_SEGMENT``, ``geofence_id``, ``geofence``
  (``lat_min,lon_min,lat_max,lon_max`` in microdegrees), ``power_w`` and ``tariff_id`` (a tariff
  filed by a rate authority and covering the segment: the segment's filed rate, M3);
* a **vehicle** signs a ``TripAuthorised`` (C1 identity naming the road operator as the
  "station", C2 claim with a ``WirelessSegmentExtension``: ceiling rate, energy budget, trip
  window, and ``meter_seconds`` as a meter-seconds budget) and later a ``TripClosed``;
* each **segment** signs a ``SegmentPassesRecorded``: one signature over a batch of passes, each
  pass a micro-transaction (vehicle, trip, entered/left at ms, meter-seconds, Wh, geofence id
  and position fix).

Where aggregation happens, and why here. All three event types are keyed by the road operator
(``road_operator_id``) on the market topic, so one single writer -- the road operator's
ledger, ``LedgerState(station_id=road_operator_id)``, driven by the same ``commands.handle`` and
``market_step`` as every station -- orders a trip's authorisation, every pass of every segment
it crosses, and its close. A trip crosses many segments, and a segment batch carries passes of
many trips: keyed by segment, a trip would be split over partitions (no single writer); keyed
by trip, a segment could not batch (at any instant a segment carries one or two vehicles, so a
batch per trip is one pass) and each pass would pay the full per-event cost (verify, lineage
copy, event position, state write: ~260 events/s per worker, see README). Keyed by road
operator, one verified signature and one ledger write cover a whole batch, and the worker
emits one ``SegmentPassesApplied`` per batch and one ``TripSettled`` (+ the billing feed's
``SettlementAdmitted``/``SettlementFinalised``) per trip. The cost: one road network's open
trips live in one ledger value, so it is bounded (``TRIPS_OPEN_MAX``); a larger network is
credentialed as several road operators (one per corridor), each its own partition key. A trip
on another operator's road is another trip (its own authorisation), as with a toll concession.

Replay safety: a redelivered input changes nothing (the ledger's applied offset and the event
position table), a pass id already applied to the trip is refused ``DUPLICATE_PASS`` (in the
same batch or in any later one), passes of a closed trip ``TRIP_CLOSED``. A segment's passes
on one trip must also come in time order (``OVERLAPPING_PASS``).

Plausibility: ``left > entered``, a pass lasts at most ``PASS_DURATION_MS_MAX``,
meter-seconds fit in the pass (``1000 * meter_seconds <= left - entered + METER_SLACK_MS``),
and energy fits the segment's credentialed power over those meter-seconds (plus
``PLAUSIBILITY_TOLERANCE`` and ``PLAUSIBILITY_SLACK_WH``). Geofence: the pass names the
segment's geofence and its position fix lies in the segment's box. Money: each pass is priced
at its segment's filed rate at entry (the tariff's time-of-use band, else its ceiling), under
the version of the tariff in force at entry (M3, as sessions bill), and refused above the
vehicle's ceiling; a trip settles in lines per (segment, rate, version), each rounded once by
the rate authority's rule, plus each version's adders and tax on the energy billed under it
(``settlement.with_tax``).

A trip closes when its vehicle signs ``TripClosed``, or -- as its signed authorisation agreed
(``idle_close_ms``, the trip window) -- at its last pass plus ``idle_close_ms`` or at the
window's end, settled once the road's clock (the segments' signed times) is
``LATE_BATCH_MS_MAX`` past that (passes entered after it are refused). Either way the settlement
is final at once: the vehicle's signature (close, or the authorisation's idle rule) and the
segments' signatures over every pass are all it needs.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from chargemesh.processors.decisions import Decision, DecisionType, decided
from chargemesh.processors.governance import TrustStore
from chargemesh.processors.ledger import state as ledger
from chargemesh.processors.ledger.state import Command, GovernanceView, LedgerState, _emit
from chargemesh.processors.reasons import Reason, Rejection
from chargemesh.processors.settlement import (
    WH_PER_KWH,
    Tariff,
    adder_lines,
    line,
    version_at,
    with_tax,
)
from chargemesh.processors.statuses import (
    ConnectorKind,
    LineKind,
    SettlementKind,
    TripCloseReason,
    TripStatus,
)
from chargemesh.units import DAY_MS, HOUR_MS, MINUTE_MS, SECOND_MS

EMBODIMENT = ConnectorKind.WIRELESS_SEGMENT
TRIPS_OPEN_MAX = 2_000
# The road's ledger is one state record (at most topics.MESSAGE_BYTES_MAX = 1 MiB): what its open
# trips hold is budgeted by estimate (per trip, per accepted pass: measured JSON sizes, rounded
# up), leaving room for the rest of the ledger. About 130 trips of 10 passes fit; past it trips
# and passes are refused LEDGER_FULL (a larger network is several road operators).
ROAD_STATE_BYTES_MAX = 600_000
TRIP_BYTES_EST = 1_000
PASS_BYTES_EST = 350
TRIPS_CLOSED_KEPT_MAX = 20_000
PASSES_PER_BATCH_MAX = 1_000
PASSES_PER_TRIP_MAX = 2_000
EVIDENCE_IDS_PER_TRIP_MAX = 1_000
ID_CHARS_MAX = 128
TRIP_DURATION_MS_MAX = 24 * HOUR_MS
PASS_DURATION_MS_MAX = 10 * MINUTE_MS
IDLE_CLOSE_MS_DEFAULT = 10 * MINUTE_MS
IDLE_CLOSE_MS_MAX = 2 * HOUR_MS
# A pass may end at most this far after the batch that records it was signed.
PASS_CLOCK_SKEW_MS_MAX = 5_000
METER_SLACK_MS = 1_000
# A segment publishes a pass at most this long after it ended: an idle trip is settled only
# once the road's clock is this far past its close, so every pass it had is in.
LATE_BATCH_MS_MAX = 60_000
PLAUSIBILITY_TOLERANCE = Decimal("0.05")
PLAUSIBILITY_SLACK_WH = 2
SEGMENT_POWER_W_MAX = 2_000_000
EXPIRY_SCAN_INTERVAL_MS = 1_000
S_PER_HOUR = HOUR_MS // SECOND_MS
MINUTES_PER_DAY = DAY_MS // MINUTE_MS
ZERO = Decimal(0)
OPEN, CLOSED = TripStatus.OPEN, TripStatus.CLOSED
VEHICLE_CLOSED = TripCloseReason.VEHICLE_CLOSED
IDLE_TIMEOUT = TripCloseReason.IDLE_TIMEOUT
WINDOW_ENDED = TripCloseReason.WINDOW_ENDED


def wireless(state: LedgerState) -> dict[str, Any]:
    """The road operator's E1 state inside the ledger (saved and restored with it)."""
    return state.extra.setdefault(  # type: ignore[no-any-return]
        "wireless", {"trips": {}, "closed": {}, "scanned_at_ms": 0, "held_bytes_est": 0})


# ---- the segment, as its road operator credentialed it ---------------------------------------


def segment_of(view: GovernanceView, credential_id: str, road_operator_id: str,
               segment_id: str) -> dict[str, Any] | Rejection:
    """The segment's geofence, power and filed tariff, from its credential (governance)."""
    if not isinstance(view, TrustStore):
        return Rejection(Reason.NOT_A_WIRELESS_SEGMENT, "no credential view")
    principal = view.principals.get(credential_id)
    if principal is None or principal.subject_id != segment_id:
        return Rejection(Reason.NOT_A_WIRELESS_SEGMENT,
                         f"{credential_id} is not segment {segment_id}")
    if principal.parent_id != road_operator_id:
        return Rejection(Reason.SEGMENT_NOT_OF_OPERATOR, f"{segment_id} is credentialed by "
                         f"{principal.parent_id}, not {road_operator_id}")
    if principal.attribute("embodiment") != EMBODIMENT:
        return Rejection(Reason.NOT_A_WIRELESS_SEGMENT, f"{segment_id} is not a {EMBODIMENT}")
    try:
        power_w = int(principal.attribute("power_w"))
        box = [int(x) for x in principal.attribute("geofence").split(",")]
    except ValueError:
        return Rejection(Reason.NOT_A_WIRELESS_SEGMENT, "power_w and geofence must be integers")
    if not 0 < power_w <= SEGMENT_POWER_W_MAX or len(box) != 4 or box[0] > box[2] or (
            box[1] > box[3]):
        return Rejection(Reason.NOT_A_WIRELESS_SEGMENT, "power_w or geofence out of range")
    tariff_id = principal.attribute("tariff_id")
    filed = view.tariffs.get(tariff_id)
    if filed is None or (filed["station_ids"] and segment_id not in filed["station_ids"]):
        return Rejection(Reason.UNKNOWN_TARIFF, f"{tariff_id!r} is not filed for {segment_id}")
    return {"segment_id": segment_id, "geofence_id": principal.attribute("geofence_id"),
            "box": box, "power_w": power_w, "tariff": filed,
            "tariff_schedule": view.tariff_schedule(tariff_id)}


def in_force(segment: dict[str, Any], at_ms: int) -> dict[str, Any]:
    """The segment with the version of its tariff in force at ``at_ms`` (M3)."""
    filings = segment.get("tariff_schedule") or [segment["tariff"]]
    filed = filings[version_at([Tariff.from_filing(f) for f in filings], at_ms)]
    return dict(segment, tariff=filed)


def filed_rate(filed: dict[str, Any], at_ms: int) -> Decimal:
    """The tariff's rate at ``at_ms`` (UTC time-of-use band), else its filed ceiling."""
    minute = (at_ms // MINUTE_MS) % MINUTES_PER_DAY
    for band in filed.get("time_of_use") or []:
        if band["start_minute_of_day"] <= minute < band["end_minute_of_day"]:
            return Decimal(band["rate_per_kwh"])
    return Decimal(filed["energy_rate_ceiling_per_kwh"])


# ---- authorise --------------------------------------------------------------------------------


def authorise_trip(state: LedgerState, cmd: Command, view: GovernanceView,
               out: list[Decision]) -> Rejection | None:
    p, w = cmd.payload, wireless(state)
    problem = _trip_problem(state, cmd, view)
    if problem is not None:
        return problem
    claim, ident = p["claim"], p["identity"]
    ext = claim["extension"] or {}
    w["trips"][p["trip_id"]] = {
        "trip_id": p["trip_id"], "status": OPEN, "identity": dict(ident),
        "vehicle_credential_id": cmd.author_id,
        "ceiling": claim["ceiling_rate_per_kwh"], "currency": claim["currency"],
        "energy_wh_max": claim["energy_wh"], "meter_seconds_max": ext.get("meter_seconds", 0),
        "start_ms": claim["slot_start_at_ms"], "stop_ms": claim["slot_stop_at_ms"],
        "idle_close_ms": p["idle_close_ms"] or IDLE_CLOSE_MS_DEFAULT,
        "opened_at_ms": p["authorised_at_ms"], "last_at_ms": p["authorised_at_ms"],
        "terms": None, "lines": {}, "pass_ids": {}, "last_left": {},
        "energy_wh": 0, "meter_seconds": 0, "accepted": 0, "refused": 0,
        "evidence_event_ids": [cmd.event_id], "held_bytes_est": TRIP_BYTES_EST,
    }
    w["held_bytes_est"] += TRIP_BYTES_EST
    return None


def _trip_problem(state: LedgerState, cmd: Command, view: GovernanceView) -> Rejection | None:
    p, w = cmd.payload, wireless(state)
    claim, ident = p["claim"], p["identity"]
    ext = claim["extension"]
    if not 0 < len(p["trip_id"]) <= ID_CHARS_MAX:
        return Rejection(Reason.INVALID_TRIP, f"trip_id must be 1..{ID_CHARS_MAX} chars")
    if p["trip_id"] in w["trips"] or p["trip_id"] in w["closed"]:
        return Rejection(Reason.DUPLICATE_TRIP, f"{p['trip_id']} exists already")
    if ident["station_id"] != p["road_operator_id"]:
        return Rejection(Reason.INVALID_TRIP, "identity.station_id must name the road operator")
    if ident["vehicle_credential_id"] != cmd.author_id:
        return Rejection(Reason.NOT_YOUR_TRIP, "the identity names another vehicle credential")
    if ext is not None and "segment_id" not in ext:
        return Rejection(Reason.WRONG_EMBODIMENT, "the claim's extension is not a wireless segment")
    if not 0 < claim["slot_stop_at_ms"] - claim["slot_start_at_ms"] <= TRIP_DURATION_MS_MAX:
        return Rejection(Reason.INVALID_TRIP,
                         f"the trip window must be 1..{TRIP_DURATION_MS_MAX} ms")
    if claim["ceiling_rate_per_kwh"] <= ZERO or claim["energy_wh"] <= 0:
        return Rejection(Reason.INVALID_TRIP, "ceiling rate and energy budget must be positive")
    if (ext or {}).get("meter_seconds", 0) < 0:
        return Rejection(Reason.INVALID_TRIP, "meter_seconds budget must not be negative")
    if not 0 <= p["idle_close_ms"] <= IDLE_CLOSE_MS_MAX:
        return Rejection(Reason.INVALID_TRIP, f"idle_close_ms must be 0..{IDLE_CLOSE_MS_MAX}")
    if abs(p["authorised_at_ms"] - cmd.occurred_at_ms) > ledger.VEHICLE_CLOCK_LEAD_MS_MAX:
        return Rejection(Reason.INVALID_TIME, "authorised_at_ms is not the event's own time")
    if not _is_road_operator(view, p["road_operator_id"], cmd.occurred_at_ms):
        return Rejection(Reason.UNKNOWN_ROAD_OPERATOR,
                         f"{p['road_operator_id']} does not credential "
                         "segments")
    if any(t["vehicle_credential_id"] == cmd.author_id for t in w["trips"].values()):
        return Rejection(Reason.TRIP_ALREADY_OPEN,
                         "the vehicle has an open trip on this road: close "
                         "it first")
    if len(w["trips"]) >= TRIPS_OPEN_MAX or (
            w["held_bytes_est"] + TRIP_BYTES_EST > ROAD_STATE_BYTES_MAX):
        return Rejection(Reason.LEDGER_FULL,
                         "this road's ledger holds as many open trips as it can")
    return None


def _is_road_operator(view: GovernanceView, operator_id: str, at_ms: int) -> bool:
    if not isinstance(view, TrustStore):
        return False
    verdict = view.resolve(operator_id, at_ms)
    return not isinstance(verdict, Rejection) and verdict.principal.kind == "issuer" and (
        "STATION" in verdict.principal.roles)


# ---- passes -----------------------------------------------------------------------------------


def record_passes(state: LedgerState, cmd: Command, view: GovernanceView,
                   out: list[Decision]) -> Rejection | None:
    p = cmd.payload
    _road_clock(state, cmd.occurred_at_ms)
    segment = segment_of(view, cmd.author_id, p["road_operator_id"], p["segment_id"])
    if isinstance(segment, Rejection):
        return segment
    if not 0 < len(p["passes"]) <= PASSES_PER_BATCH_MAX:
        return Rejection(Reason.INVALID_BATCH, f"1..{PASSES_PER_BATCH_MAX} passes per batch")
    if abs(p["recorded_at_ms"] - cmd.occurred_at_ms) > PASS_CLOCK_SKEW_MS_MAX:
        return Rejection(Reason.INVALID_TIME, "recorded_at_ms is not the event's own time")
    _close_idle(state, out)
    outcomes = [_apply_pass(state, cmd, segment, ps) for ps in p["passes"]]
    _emit(state, out, decided(DecisionType.SEGMENT_PASSES_APPLIED, {
        "batch_event_id": cmd.event_id, "batch_id": p["batch_id"],
        "road_operator_id": p["road_operator_id"], "segment_id": p["segment_id"],
        "segment_credential_id": cmd.author_id, "outcomes": outcomes,
        "applied_at_ms": state.clock_ms}))
    return None


def _road_clock(state: LedgerState, at_ms: int) -> None:
    """Segments sign the road's time (as a station's own events carry a station's clock)."""
    state.station_clock_ms = max(state.station_clock_ms, at_ms)
    state.clock_ms = max(state.clock_ms, at_ms)


def _apply_pass(state: LedgerState, cmd: Command, segment: dict[str, Any],
                ps: dict[str, Any]) -> dict[str, Any]:
    trip = wireless(state)["trips"].get(ps["trip_id"])
    segment = in_force(segment, ps["entered_at_ms"])  # M3: the version in force at entry
    rate = filed_rate(segment["tariff"], ps["entered_at_ms"])
    amount = Decimal(ps["energy_wh"]) * rate / WH_PER_KWH if ps["energy_wh"] >= 0 else ZERO
    problem = pass_problem(state, segment, ps, trip, rate, cmd.occurred_at_ms)
    outcome = {
        "pass_id": ps["pass_id"][:ID_CHARS_MAX], "trip_id": ps["trip_id"][:ID_CHARS_MAX],
        "vehicle_credential_id": ps["vehicle_credential_id"][:ID_CHARS_MAX],
        "geofence_id": ps["geofence_id"][:ID_CHARS_MAX],
        "entered_at_ms": ps["entered_at_ms"], "left_at_ms": ps["left_at_ms"],
        "meter_seconds": ps["meter_seconds"], "energy_wh": ps["energy_wh"],
        "rate_per_kwh": rate, "amount": _wire_money(amount),
        "currency": segment["tariff"]["currency"], "tariff_id": segment["tariff"]["tariff_id"],
        "accepted": problem is None, "reason_code": problem.reason if problem else "",
        "detail": problem.detail if problem else "",
    }
    if trip is not None and trip["status"] == OPEN:
        if problem is None:
            _aggregate(trip, segment, ps, rate, cmd.event_id)
            trip["held_bytes_est"] += PASS_BYTES_EST
            wireless(state)["held_bytes_est"] += PASS_BYTES_EST
        else:
            trip["refused"] += 1
    return outcome


def _wire_money(amount: Decimal) -> Decimal:
    return amount.quantize(Decimal("0.000001"))


def pass_problem(state: LedgerState, segment: dict[str, Any], ps: dict[str, Any],
                 trip: dict[str, Any] | None, rate: Decimal,
                 recorded_at_ms: int) -> Rejection | None:
    """Why this pass is refused (None: accepted). Trip, identity, geofence, then physics."""
    if not 0 < len(ps["pass_id"]) <= ID_CHARS_MAX:
        return Rejection(Reason.INVALID_PASS, f"pass_id must be 1..{ID_CHARS_MAX} chars")
    if trip is None:
        closed = ps["trip_id"] in wireless(state)["closed"]
        return Rejection(Reason.TRIP_CLOSED if closed else Reason.UNKNOWN_TRIP,
                         f"{ps['trip_id'][:ID_CHARS_MAX]} is not an open trip on this road")
    if ps["pass_id"] in trip["pass_ids"]:
        return Rejection(Reason.DUPLICATE_PASS, f"{ps['pass_id']} was applied to this trip already")
    if ps["vehicle_credential_id"] != trip["vehicle_credential_id"]:
        return Rejection(Reason.NOT_THE_TRIPS_VEHICLE, "the pass names another vehicle")
    if ps["entered_at_ms"] > trip["last_at_ms"] + trip["idle_close_ms"]:
        return Rejection(Reason.TRIP_CLOSED, "the trip had idled out before this pass")
    if wireless(state)["held_bytes_est"] + PASS_BYTES_EST > ROAD_STATE_BYTES_MAX:
        return Rejection(Reason.LEDGER_FULL, "this road's ledger holds as many passes as it can")
    return (geofence_problem(segment, ps) or timing_problem(segment, ps, trip, recorded_at_ms)
            or energy_problem(segment, ps) or _terms_problem(segment, ps, trip, rate))


def geofence_problem(segment: dict[str, Any], ps: dict[str, Any]) -> Rejection | None:
    if ps["geofence_id"] != segment["geofence_id"]:
        return Rejection(Reason.OUTSIDE_GEOFENCE, f"pass names geofence {ps['geofence_id']!r}, the "
                         f"segment is {segment['geofence_id']!r}")
    lat_min, lon_min, lat_max, lon_max = segment["box"]
    if not (lat_min <= ps["latitude_microdeg"] <= lat_max
            and lon_min <= ps["longitude_microdeg"] <= lon_max):
        return Rejection(Reason.OUTSIDE_GEOFENCE,
                         "the position fix is outside the segment's geofence")
    return None


def timing_problem(segment: dict[str, Any], ps: dict[str, Any], trip: dict[str, Any],
                   recorded_at_ms: int) -> Rejection | None:
    entered, left = ps["entered_at_ms"], ps["left_at_ms"]
    if not 0 < left - entered <= PASS_DURATION_MS_MAX:
        return Rejection(Reason.IMPLAUSIBLE_PASS, f"a pass lasts 1..{PASS_DURATION_MS_MAX} ms")
    if left > recorded_at_ms + PASS_CLOCK_SKEW_MS_MAX:
        return Rejection(Reason.IMPLAUSIBLE_PASS, "the pass ends after the batch was signed")
    if entered < trip["start_ms"] or left > trip["stop_ms"] or entered < trip["opened_at_ms"] - (
            ledger.VEHICLE_CLOCK_LEAD_MS_MAX):
        return Rejection(Reason.OUTSIDE_TRIP_WINDOW, "the pass is outside the authorised trip")
    if entered < trip["last_left"].get(segment["segment_id"], 0):
        return Rejection(Reason.OVERLAPPING_PASS,
                         "the pass overlaps an earlier pass on this segment")
    if not 0 <= ps["meter_seconds"] * SECOND_MS <= left - entered + METER_SLACK_MS:
        return Rejection(Reason.IMPLAUSIBLE_METER_SECONDS,
                         f"{ps['meter_seconds']} meter-seconds in "
                         f"a {left - entered} ms pass")
    return None


def energy_problem(segment: dict[str, Any], ps: dict[str, Any]) -> Rejection | None:
    """Energy within the segment's power over the metered seconds (plus tolerance)."""
    if ps["energy_wh"] < 0:
        return Rejection(Reason.IMPLAUSIBLE_ENERGY, "energy must not be negative")
    most = (Decimal(segment["power_w"] * ps["meter_seconds"]) / S_PER_HOUR
            * (1 + PLAUSIBILITY_TOLERANCE) + PLAUSIBILITY_SLACK_WH)
    if ps["energy_wh"] > most:
        return Rejection(Reason.IMPLAUSIBLE_ENERGY,
                         f"{ps['energy_wh']} Wh in {ps['meter_seconds']} "
                         f"meter-seconds at {segment['power_w']} W (at most {int(most)} Wh)")
    return None


def _terms(segment: dict[str, Any]) -> dict[str, Any]:
    """What every pass of one trip must share: one rate authority, currency and rule set."""
    filed = segment["tariff"]
    tariff = Tariff.from_filing(filed)
    return {"tariff_id": filed["tariff_id"], "rate_authority_id": filed["rate_authority_id"],
            "jurisdiction": filed["jurisdiction"], "tariff": tariff.as_dict()}


def _same_terms(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keep = ("currency", "minor_units", "rounding", "tax_percent", "congestion_fee_per_kwh",
            "renewable_adder_per_kwh")
    if a["rate_authority_id"] == b["rate_authority_id"] and a["tariff_id"] == b["tariff_id"]:
        return True  # another version of the same tariff (M3): its own adders and tax apply
    return a["rate_authority_id"] == b["rate_authority_id"] and all(
        a["tariff"][k] == b["tariff"][k] for k in keep)


def _terms_problem(segment: dict[str, Any], ps: dict[str, Any], trip: dict[str, Any],
                   rate: Decimal) -> Rejection | None:
    filed = segment["tariff"]
    if filed["rate_authority_id"] != trip["identity"]["rate_authority_id"]:
        return Rejection(Reason.OTHER_RATE_AUTHORITY, f"the segment's rates are filed by "
                         f"{filed['rate_authority_id']}, the trip was authorised under "
                         f"{trip['identity']['rate_authority_id']}")
    if filed["currency"] != trip["currency"]:
        return Rejection(Reason.CURRENCY_MISMATCH,
                         f"the segment's tariff is in {filed['currency']}")
    if trip["terms"] is not None and not _same_terms(trip["terms"], _terms(segment)):
        return Rejection(Reason.TARIFF_MISMATCH, f"{filed['tariff_id']} differs from the trip's "
                         f"{trip['terms']['tariff_id']} in more than its rate")
    if rate > trip["ceiling"]:
        return Rejection(Reason.ABOVE_CEILING, f"filed rate {rate} exceeds the trip's ceiling "
                         f"{trip['ceiling']}")
    if trip["energy_wh"] + ps["energy_wh"] > trip["energy_wh_max"]:
        return Rejection(Reason.ENERGY_LIMIT, f"the trip's {trip['energy_wh_max']} Wh are used up")
    budget = trip["meter_seconds_max"]
    if budget and trip["meter_seconds"] + ps["meter_seconds"] > budget:
        return Rejection(Reason.METER_SECONDS_LIMIT,
                         f"the trip's {budget} meter-seconds are used up")
    if trip["accepted"] >= PASSES_PER_TRIP_MAX:
        return Rejection(Reason.TRIP_FULL, f"{PASSES_PER_TRIP_MAX} passes per trip")
    return None


def _aggregate(trip: dict[str, Any], segment: dict[str, Any], ps: dict[str, Any],
               rate: Decimal, event_id: str) -> None:
    if trip["terms"] is None:
        trip["terms"] = _terms(segment)
    sid = segment["segment_id"]
    version = Tariff.from_filing(segment["tariff"])
    key = f"{sid}@{rate}" + (f"@{version.effective_from_ms}" if version.effective_from_ms else "")
    agg = trip["lines"].setdefault(key, {
        "segment_id": sid, "tariff_id": segment["tariff"]["tariff_id"], "rate": rate,
        "tariff": version.as_dict(),  # M3: the version it is billed under
        "energy_wh": 0, "meter_seconds": 0, "passes": 0, "from_ms": ps["entered_at_ms"],
        "until_ms": ps["left_at_ms"]})
    agg["energy_wh"] += ps["energy_wh"]
    agg["meter_seconds"] += ps["meter_seconds"]
    agg["passes"] += 1
    agg["from_ms"] = min(agg["from_ms"], ps["entered_at_ms"])
    agg["until_ms"] = max(agg["until_ms"], ps["left_at_ms"])
    trip["pass_ids"][ps["pass_id"]] = 1
    trip["last_left"][sid] = ps["left_at_ms"]
    trip["energy_wh"] += ps["energy_wh"]
    trip["meter_seconds"] += ps["meter_seconds"]
    trip["accepted"] += 1
    trip["last_at_ms"] = max(trip["last_at_ms"], ps["left_at_ms"])
    ids = trip["evidence_event_ids"]
    if ids[-1] != event_id and len(ids) < EVIDENCE_IDS_PER_TRIP_MAX:
        ids.append(event_id)


# ---- close and settle -------------------------------------------------------------------------


def close_trip(state: LedgerState, cmd: Command, view: GovernanceView,
           out: list[Decision]) -> Rejection | None:
    p, w = cmd.payload, wireless(state)
    trip = w["trips"].get(p["trip_id"])
    if trip is None:
        closed = p["trip_id"] in w["closed"]
        return Rejection(Reason.TRIP_CLOSED if closed else Reason.UNKNOWN_TRIP,
                         f"{p['trip_id']} is not an open trip on this road")
    if trip["vehicle_credential_id"] != cmd.author_id:
        return Rejection(Reason.NOT_YOUR_TRIP, "only the trip's vehicle closes it")
    if abs(p["closed_at_ms"] - cmd.occurred_at_ms) > ledger.VEHICLE_CLOCK_LEAD_MS_MAX:
        return Rejection(Reason.INVALID_TIME, "closed_at_ms is not the event's own time")
    if len(trip["evidence_event_ids"]) < EVIDENCE_IDS_PER_TRIP_MAX:
        trip["evidence_event_ids"].append(cmd.event_id)
    _settle(state, trip, max(p["closed_at_ms"], trip["last_at_ms"]), VEHICLE_CLOSED, out)
    return None


def _close_idle(state: LedgerState, out: list[Decision]) -> None:
    """Settle the trips the road's clock has left behind (idle, or past their window)."""
    w = wireless(state)
    if state.clock_ms - w["scanned_at_ms"] < EXPIRY_SCAN_INTERVAL_MS:
        return
    w["scanned_at_ms"] = state.clock_ms
    for trip_id in sorted(w["trips"]):
        trip = w["trips"][trip_id]
        idle_at = trip["last_at_ms"] + trip["idle_close_ms"]
        if state.station_clock_ms >= min(idle_at, trip["stop_ms"]) + LATE_BATCH_MS_MAX:
            reason = IDLE_TIMEOUT if idle_at <= trip["stop_ms"] else WINDOW_ENDED
            _settle(state, trip, min(idle_at, trip["stop_ms"]), reason, out)


def _settle(state: LedgerState, trip: dict[str, Any], closed_at_ms: int,
            reason: TripCloseReason, out: list[Decision]) -> None:
    w = wireless(state)
    del w["trips"][trip["trip_id"]]
    w["held_bytes_est"] -= trip["held_bytes_est"]
    w["closed"][trip["trip_id"]] = closed_at_ms
    if len(w["closed"]) > TRIPS_CLOSED_KEPT_MAX:
        oldest = sorted(w["closed"], key=lambda t: (w["closed"][t], t))
        for tid in oldest[:len(w["closed"]) - TRIPS_CLOSED_KEPT_MAX]:
            del w["closed"][tid]
    settlement = trip_settlement(trip, state.clock_ms)
    terms = trip["terms"] or {}
    _emit(state, out, decided(DecisionType.TRIP_SETTLED, {
        "trip_id": trip["trip_id"], "road_operator_id": state.station_id,
        "vehicle_credential_id": trip["vehicle_credential_id"],
        "settlement_id": settlement["settlement_id"] if settlement else "",
        "rate_authority_id": trip["identity"]["rate_authority_id"],
        "jurisdiction": terms.get("jurisdiction", trip["identity"]["jurisdiction"]),
        "tariff_id": terms.get("tariff_id", ""), "currency": trip["currency"],
        "opened_at_ms": trip["opened_at_ms"], "closed_at_ms": closed_at_ms,
        "close_reason": reason, "passes_accepted": trip["accepted"],
        "passes_refused": trip["refused"], "segments": len({a["segment_id"]
                                                             for a in trip["lines"].values()}),
        "meter_seconds": trip["meter_seconds"], "energy_wh": trip["energy_wh"],
        "total_amount": settlement["total_amount"] if settlement else ZERO, "final": True}))
    if settlement is None:
        return  # nothing delivered, nothing to bill
    _emit(state, out, decided(DecisionType.SETTLEMENT_ADMITTED, settlement))
    _emit(state, out, decided(DecisionType.SETTLEMENT_FINALISED, {
        "settlement_id": settlement["settlement_id"], "session_id": trip["trip_id"],
        "signer_ids": [trip["vehicle_credential_id"]], "finalised_at_ms": state.clock_ms}))


def trip_lines(trip: dict[str, Any]) -> tuple[list[dict[str, Any]], Decimal]:
    """Per version of the tariff billed (M3, in order of taking effect): one ENERGY line per
    (segment, filed rate), rounded once; then that version's adders and tax."""
    versions: dict[int, list[dict[str, Any]]] = {}  # segments' tariffs of one trip share terms
    for key in sorted(trip["lines"]):
        agg = trip["lines"][key]
        version = Tariff(**(agg.get("tariff") or trip["terms"]["tariff"]))
        versions.setdefault(version.effective_from_ms, []).append(agg)
    if len(versions) == 1:
        return _version_lines(Tariff(**trip["terms"]["tariff"]), trip["lines"])
    lines: list[dict[str, Any]] = []
    for aggs in (versions[k] for k in sorted(versions)):
        lines += _version_lines(Tariff(**aggs[0]["tariff"]),
                                {f"{i:06d}": a for i, a in enumerate(aggs)})[0]
    return lines, sum((ln["amount"] for ln in lines), Decimal(0))


def _version_lines(tariff: Tariff, aggs: dict[str, Any]) -> tuple[list[dict[str, Any]], Decimal]:
    lines = []
    for key in sorted(aggs):
        agg = aggs[key]
        rate = Decimal(agg["rate"])
        amount = tariff.round(Decimal(agg["energy_wh"]) * rate / WH_PER_KWH)
        lines.append(line(LineKind.ENERGY, f"segment {agg['segment_id']}: {agg['passes']} passes, "
                          f"{agg['meter_seconds']} meter-seconds, {agg['energy_wh']} Wh at "
                          f"{rate}/kWh", agg["energy_wh"], rate, amount, agg["from_ms"],
                          agg["until_ms"]))
    lines += adder_lines(tariff, sum(int(a["energy_wh"]) for a in aggs.values()))
    taxed: tuple[list[dict[str, Any]], Decimal] = with_tax(tariff, lines)
    return taxed


def trip_settlement(trip: dict[str, Any], at_ms: int) -> dict[str, Any] | None:
    """The trip's SettlementAdmitted record (None when no pass was accepted)."""
    if trip["terms"] is None or not trip["lines"]:
        return None
    lines, total = trip_lines(trip)
    tariff = trip["terms"]["tariff"]
    identity = dict(trip["identity"], jurisdiction=trip["terms"]["jurisdiction"])
    return {
        "settlement_id": f"stl:{trip['trip_id']}", "session_id": trip["trip_id"],
        "identity": identity, "tariff_id": trip["terms"]["tariff_id"],
        "currency": tariff["currency"], "rounding": tariff["rounding"], "lines": lines,
        "total_amount": total, "energy_import_wh": trip["energy_wh"], "energy_export_wh": 0,
        "evidence_event_ids": list(trip["evidence_event_ids"]),
        "required_signer_ids": [trip["vehicle_credential_id"]],
        "kind": SettlementKind.CHARGE,
        "adjusts_settlement_id": "", "admitted_at_ms": at_ms,
    }
