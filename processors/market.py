"""One step of a station's single-writer ledger for one admitted market event. Pure.

The Faust agent and any replay (tests, the regulator's audit) share this function, so a replay
of the market topic reproduces exactly what the processors decided.
"""

from __future__ import annotations

import dataclasses

from chargemesh.processors import ledger
from chargemesh.processors.ingress import Admitted
from chargemesh.processors.reasons import Reason, Rejection


@dataclasses.dataclass
class Step:
    applied: bool  # False: already applied before (redelivery), nothing to publish
    replay: bool = False
    decisions: list[ledger.Decision] = dataclasses.field(default_factory=list)
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
    event = verdict.event
    cmd = ledger.Command(event.event_type, verdict.payload, event.body.occurred_at_ms,
                         event.body.author_credential_id, event.event_id)
    outcome = ledger.handle(state, cmd, view)
    decisions = list(outcome.decisions)
    if outcome.rejection is not None and outcome.rejected_order is not None:
        decisions.append(("OrderRejected", {
            "order_id": outcome.rejected_order["order_id"], "station_id": state.station_id,
            "vehicle_credential_id": event.body.author_credential_id,
            "reason_code": outcome.rejection.reason, "detail": outcome.rejection.detail}))
    return Step(applied=True, decisions=decisions, rejection=outcome.rejection)
