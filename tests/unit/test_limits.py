"""Limits where memory or a state record could grow without bound: refused with a reason instead.

Pure tests (no broker): the station ledger's state budget (its record must fit its topic) and
the governance follower's verdicts (a hostile record is not kept in memory).
"""

from __future__ import annotations

import pytest
from chargemesh.processors.ledger import state as ledger
from chargemesh.processors.ledger import step as market
from chargemesh.processors.runtime.follower import GovernanceFollower
from chargemesh.processors.ingress import Admitted, Refused
from chargemesh.processors.ledger.step import market_step
from chargemesh.streams import topics
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.envelope import open_payload
from chargemesh.streams.sdk.participant import Participant

from tests.faults.test_fuzz import fixture
from tests.support.world import T0_MS, make_world

READINGS_TRIED_MAX = 5_000


def test_the_budget_leaves_room_under_the_topic_limit() -> None:
    assert market.STATION_STATE_BYTES_MAX + 100_000 < topics.MESSAGE_BYTES_MAX


def test_one_meter_cannot_grow_its_stations_ledger_past_the_state_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Readings a few ms apart with no energy are plausible, and a session holds up to 20,000
    of them (~1.3 MB): without the budget the station's state record would outgrow its topic
    and the worker could not persist it. With it, the reading that would cross the budget is
    undone and refused LEDGER_FULL, and the ledger keeps working below it."""
    budget = 60_000
    monkeypatch.setattr(market, "STATION_STATE_BYTES_MAX", budget)
    fx = fixture()
    state = ledger.load_state(ledger.dump_state(fx.base_state))
    first_at = fx.start_ms + 10 * 60_000
    refused_at = None
    for seq in range(2, READINGS_TRIED_MAX):
        reading = sdk.meter_reading(fx.meter, session_id="fz-session", station_id="fz-station",
                                    connector_id="c1", seq=seq, import_wh=5_000,
                                    at_ms=first_at + seq)
        before = ledger.dump_state(state)
        step = market_step(state, Admitted(reading, open_payload(reading), None), 0, 100 + seq,
                           None, fx.store)
        if step.rejection is not None:
            assert step.rejection.reason == "LEDGER_FULL", step.rejection
            refused_at = seq
            after = ledger.load_state(ledger.dump_state(state))
            assert after.applied_through_offset == 100 + seq  # consumed, not applied
            after.applied_through_offset = ledger.load_state(before).applied_through_offset
            assert ledger.dump_state(after) == before  # the step was undone
            break
    assert refused_at is not None and refused_at > 100
    assert len(ledger.dump_state(state)) <= budget
    heartbeat = sdk.heartbeat(fx.station, at_ms=first_at + READINGS_TRIED_MAX)
    step = market_step(state, Admitted(heartbeat, open_payload(heartbeat), None), 0, 10_000,
                       None, fx.store)
    assert step.rejection is None  # what does not grow the ledger still goes through


def test_a_refused_governance_record_is_not_kept_in_memory() -> None:
    """A forged ~500 kB credential issuance is refused BAD_SIGNATURE; its verdict keeps the ids
    for the rejection record, not the bytes, and is gone once the governance agent took it."""
    world = make_world()
    follower = GovernanceFollower({"bootstrap.servers": "unused:1"}, world.anchors())
    for offset, event in enumerate(world.governance):
        follower._apply(offset, event.body.subject_key.encode(), event.encode())
    forger = Participant.seeded(world.issuer.credential_id, secret="forger")
    forged = forger.issue_credential(Participant.seeded("stolen"), ["VEHICLE"], "US-CA",
                                     attributes={"padding": "x" * 500_000}, at_ms=T0_MS)
    offset = len(world.governance)
    follower._apply(offset, forged.body.subject_key.encode(), forged.encode())
    verdict = follower.verdicts[offset]
    assert isinstance(verdict, Refused) and verdict.event is not None
    assert verdict.rejection.reason == "BAD_SIGNATURE"
    assert (verdict.event.event_id, verdict.event.event_type) == (forged.event_id,
                                                                  forged.event_type)
    assert verdict.event.body.payload == b"" and verdict.event.body_bytes == b""
    assert follower.verdict_at(offset) is verdict
    assert follower.verdict_at(offset) is None
    assert isinstance(follower.verdict_at(0), Admitted)


def test_a_zone_refuses_a_replayed_grid_event_and_remembers_a_bounded_window() -> None:
    """Found by the hostile flood: a replayed GridEventDeclared was admitted on the grid topic
    again (and re-routed); the zone now refuses ids it applied, within its last
    GRID_EVENT_IDS_KEPT_MAX."""
    fx = fixture()
    notice = fx.valid[5]
    zone: dict[str, object] = {"stations": [], "applied_through_offset": -1}
    assert market.grid_replay(zone, notice) is None
    refused = market.grid_replay(zone, notice)
    assert refused is not None and refused.reason == "REPLAYED_EVENT_ID"
    for n in range(market.GRID_EVENT_IDS_KEPT_MAX + 5):
        other = sdk.grid_event(fx.operator, grid_event_id=f"ge-{n}", grid_zone_id="fz-zone",
                               kind="PRICE_SIGNAL", from_ms=fx.start_ms,
                               until_ms=fx.start_ms + 1, rate_per_kwh="0.5")
        assert market.grid_replay(zone, other) is None
    assert len(zone["event_ids"]) == market.GRID_EVENT_IDS_KEPT_MAX  # type: ignore[arg-type]
