"""One step of a station's single-writer ledger for one admitted market event. Pure.

The Faust agent and any replay (tests, the regulator's audit) share this function, so a replay
of the market topic reproduces exactly what the processors decided.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from chargemesh.processors.decisions import Decision, DecisionType, decided
from chargemesh.processors.governance import TrustStore
from chargemesh.processors.ingress import Admitted, decode
from chargemesh.processors.ledger import binding, commands, log_time
from chargemesh.processors.ledger import state as ledger
from chargemesh.processors.reasons import Reason, Rejection
from chargemesh.streams.envelope import SignedEvent

# A station's ledger is one record on its state topic (at most topics.MESSAGE_BYTES_MAX = 1 MiB
# with key and framing): a step that would grow it past this is undone and refused LEDGER_FULL,
# where the worker could otherwise not persist it and would stop on it at every restart (one
# meter's 20,000 readings of one session serialise to ~1.3 MB).
STATION_STATE_BYTES_MAX = 900_000
# What one event may add to the serialised state: per byte of its payload, plus a constant (a
# reservation, a session, the rules a calendar copies). Below the budget by more than that, a
# step runs without measuring; nearer, the state is serialised before and after it.
STATE_GROWTH_BYTES_PER_PAYLOAD_BYTE = 16
STATE_GROWTH_BYTES_PER_EVENT = 16_384
# A zone remembers the ids of its last grid-topic events: a replay among them is refused
# REPLAYED_EVENT_ID (an older one would be admitted on the grid topic again, and its routed
# copies still refused at every station as replays of the first routing).
GRID_EVENT_IDS_KEPT_MAX = 1_000
GRID_EVENT_ROUTED = "chargemesh.grid.v1.GridEventRouted"
GRID_EVENT_DECLARED = "chargemesh.grid.v1.GridEventDeclared"


def routed_grid_event(routed: dict[str, Any], view: ledger.GovernanceView) -> dict[str, Any] | None:
    """The operator's own signed grid event inside a routing record, verified on its own:
    the processor that routed it cannot change what the operator said."""
    decoded = decode(routed["grid_event"])
    if not isinstance(decoded, tuple):
        return None
    inner, payload = decoded
    if inner.event_type != GRID_EVENT_DECLARED or not isinstance(view, TrustStore):
        return None
    verdict = view.check_event(inner, payload)
    if not hasattr(verdict, "principal") or payload["grid_zone_id"] != routed["grid_zone_id"]:
        return None
    if not view.operates_zone(inner.body.author_credential_id, payload["grid_zone_id"],
                              inner.body.occurred_at_ms):
        return None
    verified: dict[str, Any] = payload
    return verified


def grid_replay(zone: dict[str, Any], event: SignedEvent) -> Rejection | None:
    """A grid-topic event whose id this zone applied before (``zone`` is its router's state;
    station joins, deterministic processor records, are not remembered)."""
    if event.event_type == "chargemesh.grid.v1.StationZoneJoined":
        return None
    seen: list[str] = zone.setdefault("event_ids", [])
    if event.event_id in seen:
        return Rejection.of(Reason.REPLAYED_EVENT_ID, f"{event.event_id} already applied")
    seen.append(event.event_id)
    del seen[:-GRID_EVENT_IDS_KEPT_MAX]
    return None


@dataclasses.dataclass
class Step:
    applied: bool  # False: already applied before (redelivery), nothing to publish
    replay: bool = False
    # False: refused at the ledger's log time (issue 15, hole 3): not in the lineage log
    admitted: bool = True
    decisions: list[Decision] = dataclasses.field(default_factory=list)
    rejection: Rejection | None = None


def market_step(state: ledger.LedgerState, verdict: Admitted, partition: int, offset: int,
                first_seen_at: str | None, view: ledger.GovernanceView) -> Step:
    """Apply ``verdict`` (at ``partition``/``offset``) to ``state``.

    ``first_seen_at`` is where this event id was first seen ("partition:offset"), if anywhere.
    """
    if offset <= state.applied_through_offset:
        return Step(applied=False)
    state.applied_through_offset = offset
    position = f"{partition}:{offset}"
    if first_seen_at is not None and first_seen_at != position:
        return Step(applied=True, replay=True, rejection=Rejection.of(
            Reason.REPLAYED_EVENT_ID, f"event id first seen at {first_seen_at}"))
    untimely = log_time.judge(state, verdict, view)
    if untimely is not None:
        return Step(applied=True, rejection=untimely, admitted=False)
    event = verdict.event
    payload = verdict.payload
    if event.event_type == GRID_EVENT_ROUTED:
        payload = dict(payload, _grid_event=routed_grid_event(payload, view))
    cmd = ledger.Command(event.event_type, payload, event.body.occurred_at_ms,
                         event.body.author_credential_id, event.event_id, event.event_hash)
    unbound = binding.judge(state, cmd, view)  # issue 15, hole 4: kept out of the lineage log
    if unbound is not None:
        return Step(applied=True, rejection=unbound, admitted=False)
    outcome = _handle_within_budget(state, cmd, view, len(event.body.payload))
    decisions = list(outcome.decisions)
    if outcome.rejection is not None and outcome.rejected_order is not None:
        decisions.append(decided(DecisionType.ORDER_REJECTED, {
            "order_id": outcome.rejected_order["order_id"], "station_id": state.station_id,
            "vehicle_credential_id": event.body.author_credential_id,
            "reason_code": outcome.rejection.reason, "detail": outcome.rejection.detail}))
    return Step(applied=True, decisions=decisions, rejection=outcome.rejection)


def _handle_within_budget(state: ledger.LedgerState, cmd: ledger.Command,
                          view: ledger.GovernanceView, payload_bytes: int) -> ledger.Outcome:
    """``commands.handle``, undone and refused LEDGER_FULL if it grew the state record past
    STATION_STATE_BYTES_MAX. ``_bytes_bound`` (not persisted) bounds the serialised size from
    above: exact after a load or a measurement, plus each unmeasured step's growth bound."""
    known = vars(state).get("_bytes_bound")
    bound = len(ledger.dump_state(state)) if known is None else int(known)
    growth = STATE_GROWTH_BYTES_PER_PAYLOAD_BYTE * payload_bytes + STATE_GROWTH_BYTES_PER_EVENT
    if bound + growth <= STATION_STATE_BYTES_MAX:
        outcome = commands.handle(state, cmd, view)
        vars(state)["_bytes_bound"] = bound + growth
        return outcome
    before = ledger.dump_state(state)
    outcome = commands.handle(state, cmd, view)
    after = len(ledger.dump_state(state))
    if after <= STATION_STATE_BYTES_MAX or after <= len(before):
        vars(state)["_bytes_bound"] = after
        return outcome
    vars(state).update(vars(ledger.load_state(before)))
    vars(state)["_bytes_bound"] = len(before)
    rejection = Rejection(Reason.LEDGER_FULL, f"the station's ledger would hold {after} bytes "
                          f"> {STATION_STATE_BYTES_MAX}")
    return ledger.Outcome([], rejection, cmd.payload if "order_id" in cmd.payload else None)
