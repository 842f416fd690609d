"""The grid-zone router: one single writer per zone, keyed like the grid topic. Pure.

A zone's state (JSON, on the zone-stations state topic) is the stations that joined it, the ids
of its last grid events (replays refused) and its observer state (P3). Each admitted grid event
is applied here:

- ``StationZoneJoined`` (the processor's own record, sent when a station publishes a calendar in
  the zone) adds the station;
- an observer set or attestation is folded into the observer state; a quorum is recorded and
  routed to the zone's stations, an equivocation recorded with its evidence;
- an operator's grid event is routed to every station of the zone as a ``GridEventRouted``
  market record (unless an observer set governs that time: then only a quorum takes effect).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from chargemesh.processors.governance import TrustStore
from chargemesh.processors.grid import observers
from chargemesh.processors.ingress import Admitted, Refused
from chargemesh.processors.ledger import state as ledger
from chargemesh.processors.reasons import Reason, Rejection
from chargemesh.processors.records import Output, decision_id
from chargemesh.streams import topics
from chargemesh.streams.envelope import SignedEvent, open_envelope, open_payload, seal
from chargemesh.streams.keys import Signer

log = logging.getLogger(__name__)

STATION_ZONE_JOINED = "chargemesh.grid.v1.StationZoneJoined"
GRID_EVENT_ROUTED = "chargemesh.grid.v1.GridEventRouted"
ZONE_STATIONS_MAX = 100_000
# The index of a calendar's StationZoneJoined among the records derived from it (above any
# decision index a calendar can produce, so its id never collides with one).
ZONE_JOINED_INDEX = 1_000
ERROR_DETAIL_CHARS_MAX = 500
# A zone remembers its grid events still in force (their window not yet over) so that a station
# joining after one was routed still receives it: the station's calendar and the operator's
# signal race to the zone (the join is the processors' own answer to the calendar). Bounded:
# past this, the oldest-ending are forgotten first.
IN_FORCE_EVENTS_MAX = 64
# The index of a grid event routed to a late joiner among the records derived from the join
# (above any index a join or a routing at declaration time uses).
LATE_JOIN_INDEX = 2_000

ZoneState = dict[str, Any]


def new_zone() -> ZoneState:
    return {"stations": [], "applied_through_offset": -1}


def load_zone(raw: bytes | None) -> ZoneState:
    """A zone's state from its state-topic value (a new zone for none)."""
    if not raw:
        return new_zone()
    loaded: ZoneState = json.loads(raw)
    return loaded


def dump_zone(zone: ZoneState) -> bytes:
    return json.dumps(zone, sort_keys=True).encode()


def route(zone: ZoneState, verdict: Admitted, store: TrustStore,
          signer: Signer) -> tuple[Admitted | Refused, list[Output]]:
    """Apply one admitted grid event to its zone: the verdict it ends with, and its outputs."""
    event, payload = verdict.event, verdict.payload
    if event.event_type == STATION_ZONE_JOINED:
        joining = payload["station_id"]
        known = joining in zone["stations"]
        stations = set(zone["stations"]) | {joining}
        zone["stations"] = sorted(stations)[:ZONE_STATIONS_MAX]
        if known or joining not in zone["stations"]:
            return verdict, []
        return verdict, _route_in_force(zone, event, joining, signer)
    if event.event_type in observers.ROUTER_EVENT_TYPES:
        return _observer_step(zone, verdict, store, signer)
    # Only a registered operator of the zone signs its grid events (price signals, limits).
    problem = store.zone_problem(event.body.author_credential_id, payload["grid_zone_id"],
                                 event.body.occurred_at_ms)
    if problem is not None:
        return Refused(problem, event), []
    if observers.observed(zone.get("observers"), payload["from_at_ms"]):
        return verdict, []  # P3: in lineage as a proposal; only an observer quorum takes effect
    _remember_in_force(zone, event, payload)
    outputs = [_routed(event, payload, station, signer, decision_id(event.event_id, index))
               for index, station in enumerate(zone["stations"])]
    return verdict, outputs


def _routed(event: SignedEvent, payload: dict[str, Any], station: str, signer: Signer,
            event_id: str) -> Output:
    routed = seal(
        GRID_EVENT_ROUTED,
        {"station_id": station, "grid_zone_id": payload["grid_zone_id"],
         "grid_event_id": payload["grid_event_id"], "grid_event": event.encode()},
        author=signer, subject_key=station, occurred_at_ms=event.body.occurred_at_ms,
        prev_hash=event.event_hash, event_id=event_id)
    return Output(topics.MARKET.name, station.encode(), routed.encode())


def _remember_in_force(zone: ZoneState, event: SignedEvent, payload: dict[str, Any]) -> None:
    """Keep the grid event (its exact bytes) while its window lasts, for stations joining later;
    the ones whose window ended before this event's time are dropped."""
    now = event.body.occurred_at_ms
    kept = [e for e in zone.get("in_force", []) if e["until_at_ms"] > now]
    kept.append({"until_at_ms": payload["until_at_ms"], "event_hex": event.encode().hex()})
    kept.sort(key=lambda e: -int(e["until_at_ms"]))
    zone["in_force"] = kept[:IN_FORCE_EVENTS_MAX]


def _route_in_force(zone: ZoneState, joined: SignedEvent, station: str,
                    signer: Signer) -> list[Output]:
    """The zone's grid events still in force when ``station`` joined, routed to it in the order
    they were declared (ids derived from the join, so a redelivered join derives the same)."""
    outputs = []
    live = [e for e in zone.get("in_force", []) if e["until_at_ms"] > joined.body.occurred_at_ms]
    events = sorted((open_envelope(bytes.fromhex(e["event_hex"])) for e in live),
                    key=lambda e: (e.body.occurred_at_ms, e.event_id))
    for index, event in enumerate(events):
        payload = open_payload(event)
        if observers.observed(zone.get("observers"), payload["from_at_ms"]):
            continue
        outputs.append(_routed(event, payload, station, signer,
                               decision_id(joined.event_id, LATE_JOIN_INDEX + index)))
    return outputs


def _observer_step(zone: ZoneState, verdict: Admitted, store: TrustStore,
                   signer: Signer) -> tuple[Admitted | Refused, list[Output]]:
    """P3: an observer set or attestation, folded into the zone's state. A step that raises is
    undone (the zone's observer state as before) and the event refused INTERNAL_ERROR."""
    event, before = verdict.event, json.dumps(zone.get("observers"))
    ostate = zone.setdefault("observers", observers.new_state())
    try:
        if event.event_type == observers.SET_DECLARED:
            problem = observers.declare_set(ostate, event, verdict.payload, store)
            outcome = observers.Outcome(problem)
        else:
            outcome = observers.attest(ostate, zone["stations"], event, verdict.payload)
    except Exception as exc:  # one poisoned event must not stop the zone
        log.exception("observer step failed for %s", event.event_id)
        zone.pop("observers")
        if before != "null":
            zone["observers"] = json.loads(before)
        return Refused(Rejection.of(Reason.INTERNAL_ERROR,
                                    f"{type(exc).__name__}: {exc}"[:ERROR_DETAIL_CHARS_MAX]),
                       event), []
    outputs = []
    for index, decision in enumerate(outcome.decisions):
        sealed = seal(decision.event_type, dict(decision.payload), author=signer,
                      subject_key=decision.key,
                      occurred_at_ms=event.body.occurred_at_ms, chain_id=event.body.chain_id,
                      prev_hash=event.event_hash, event_id=decision_id(event.event_id, index))
        outputs.append(Output(decision.topic, decision.key.encode(), sealed.encode()))
    return (verdict if outcome.rejection is None else Refused(outcome.rejection, event)), outputs


def zone_joined(state: ledger.LedgerState, cause: SignedEvent, signer: Signer) -> Output:
    """Tell the zone's router that this station is in its calendar's grid zone (the market
    side's answer to a published calendar)."""
    cal = state.calendar or {}
    zone = cal.get("grid_zone_id", "")
    sealed = seal(STATION_ZONE_JOINED,
                  {"station_id": state.station_id, "grid_zone_id": zone,
                   "calendar_version": cal.get("calendar_version", 0)},
                  author=signer, subject_key=zone, occurred_at_ms=state.clock_ms,
                  prev_hash=cause.event_hash,
                  event_id=decision_id(cause.event_id, ZONE_JOINED_INDEX))
    return Output(topics.GRID.name, zone.encode(), sealed.encode())
