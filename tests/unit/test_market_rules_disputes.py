"""Issue 16, disputes: the rate authority's dispute window, not ledger pruning, bounds when a
dispute may be opened; a compact summary of each settled session is kept for it. Pure."""

from __future__ import annotations

from decimal import Decimal

from chargemesh.processors.ledger import disputes
from chargemesh.processors.ledger import state as ledger
from chargemesh.processors.ledger.step import STATION_STATE_BYTES_MAX
from chargemesh.streams.sdk import participant as sdk
from chargemesh.units import DAY_MS, HOUR_MS, MINUTE_MS

from chargemesh.processors.ledger.step import Step

from tests.support.world import T0_MS, pairs
from tests.unit.test_disputes_logic import Disputed, kinds, reason


def _later(d: Disputed, at_ms: int) -> None:
    """The station's clock moves to ``at_ms`` (its heartbeat); disputes are opened after it."""
    assert d.feed(sdk.heartbeat(d.station, at_ms)).rejection is None
    d.clock_ms = at_ms


def test_a_settled_session_is_summarised_compactly_at_its_settlement() -> None:
    d = Disputed()
    summary = disputes.settled_summaries(d.state)["s1"]
    assert summary["i"] == "stl:s1" and summary["p"] == [d.station.credential_id,
                                                        d.vehicle.credential_id]
    assert summary["o"] == summary["net"] == Decimal("6.50") and summary["c"] == "USD"
    assert [ln[0] for ln in summary["l"]] == ["ENERGY", "TAX"]
    size = len(ledger.dump_state(d.state)) - len(ledger.dump_state(_without_summaries(d)))
    assert size < 800  # bytes per summary of a two-line settlement (README Limits)
    assert size <= disputes.summaries_bytes_est({"s1": summary})  # the estimate bounds it
    assert disputes.SETTLED_BYTES_KEPT_MAX + 600_000 < STATION_STATE_BYTES_MAX  # + a road's trips


def _without_summaries(d: Disputed) -> ledger.LedgerState:
    bare = ledger.load_state(ledger.dump_state(d.state))
    bare.extra.pop("settled")
    return bare


def test_a_dispute_after_the_session_left_the_live_ledger_is_accepted_within_the_window() -> None:
    d = Disputed()
    _later(d, d.start_ms + 5 * DAY_MS)
    assert "s1" not in d.state.extra["sessions"]  # pruned after ledger.FINISHED_KEPT_MS
    opened = d.open(d.vehicle, evidence=[d.lineage[-1]])  # the close-out: kept in the summary
    assert opened.rejection is None and kinds(opened) == ["DisputeRecorded"]
    void = d.feed(d.resolved(d.arbiter, "VOIDED"))
    assert void.rejection is None
    credit = void.decisions[1].payload
    assert credit["kind"] == "CREDIT" and credit["adjusts_settlement_id"] == "stl:s1"
    assert credit["total_amount"] == Decimal("-6.50")
    assert [ln["kind"] for ln in credit["lines"]] == ["ENERGY", "TAX"]
    _later(d, d.start_ms + 12 * DAY_MS)  # the resolved dispute is pruned; the summary is not
    assert reason(d.open(d.station, dispute_id="d2")) == "SETTLEMENT_VOIDED"


def test_an_adjustment_after_pruning_follows_the_rounding_and_tax_of_the_tariff() -> None:
    d = Disputed()
    _later(d, d.start_ms + 5 * DAY_MS)
    d.open(d.vehicle, evidence=[])
    step = d.feed(d.resolved(d.world.root, "ADJUSTED", "-1.50"))
    assert [(ln["kind"], ln["amount"]) for ln in step.decisions[1].payload["lines"]] == [
        ("ADJUSTMENT", Decimal("-1.50")), ("TAX", Decimal("-0.12"))]
    assert disputes.settled_summaries(d.state)["s1"]["net"] == Decimal("4.88")


def test_a_dispute_after_the_rules_window_is_refused_window_closed() -> None:
    d = Disputed()
    assert d.state.calendar is not None
    d.state.calendar["rules"]["dispute_window_ms"] = 3 * DAY_MS
    _later(d, d.start_ms + 4 * DAY_MS)
    assert reason(d.open(d.vehicle, evidence=[])) == "DISPUTE_WINDOW_CLOSED"


def test_the_window_defaults_to_ninety_days_and_binds_live_sessions_too() -> None:
    d = Disputed()
    assert disputes.dispute_window_ms(d.state) == 90 * DAY_MS
    assert d.state.calendar is not None
    d.state.calendar["rules"]["dispute_window_ms"] = HOUR_MS
    _later(d, d.start_ms + 2 * HOUR_MS)
    assert "s1" in d.state.extra["sessions"]  # still live: the window still binds
    assert reason(d.open(d.vehicle)) == "DISPUTE_WINDOW_CLOSED"


def test_evidence_after_pruning_is_judged_against_the_summary() -> None:
    d = Disputed()
    _later(d, d.start_ms + 5 * DAY_MS)
    assert reason(d.open(d.vehicle, evidence=["not-in-lineage"])) == "UNKNOWN_EVIDENCE"


def test_past_the_kept_maximum_the_oldest_is_forgotten_and_refused_with_a_reason() -> None:
    d = Disputed()
    _later(d, d.start_ms + 5 * DAY_MS)
    kept = disputes.settled_summaries(d.state)
    template = kept["s1"]
    for i in range(disputes.SETTLED_KEPT_MAX):
        kept[f"x{i}"] = dict(template, i=f"stl:x{i}", at=template["at"] + 1 + i)
    _later(d, d.clock_ms + HOUR_MS)
    assert "s1" not in kept and len(kept) <= disputes.SETTLED_KEPT_MAX
    assert disputes.summaries_bytes_est(kept) <= disputes.SETTLED_BYTES_KEPT_MAX
    assert d.state.extra["settled_forgotten_through_ms"] >= template["at"]
    assert reason(d.open(d.vehicle, evidence=[])) == "DISPUTE_WINDOW_CLOSED"


def test_a_battery_swap_can_be_disputed_and_voided() -> None:
    from tests.unit.test_swap_mobile import SwapStation, decided

    st = SwapStation()
    assert st.register("P1", "NMC", 950).rejection is None
    st.book("v1", "o1", slot=0)
    swapped = st.swap_event("v1", "o1", 0, "P1", 57_000, "PA", 6_000)
    assert decided(st.ledger.feed(swapped), "SettlementFinalised")
    at = swapped.body.occurred_at_ms + MINUTE_MS
    opened = st.ledger.feed(sdk.dispute_opened(
        st.vehicles["v1"], dispute_id="d-swap", session_id="swap-o1", station_id="swap-st",
        kind="METER_DISPUTE", claim="the pack came out short", settlement_id="stl:swap-o1",
        evidence_event_ids=[swapped.event_id], at_ms=at))
    assert opened.rejection is None, opened.rejection
    void = st.ledger.feed(sdk.dispute_resolved(
        st.world.root, dispute_id="d-swap", session_id="swap-o1", station_id="swap-st",
        outcome="VOIDED", reasoning="reviewed", adjustment_amount="0", currency="USD",
        at_ms=at + MINUTE_MS))
    credit = decided(void, "SettlementAdmitted")
    assert credit["kind"] == "CREDIT" and credit["total_amount"] == Decimal("-27.94")
    assert [ln["kind"] for ln in credit["lines"]] == ["SWAP_FEE", "ENERGY", "TAX"]


def test_a_wireless_trip_can_be_disputed_by_its_vehicle() -> None:
    from tests.unit.test_wireless_logic import Drive, decision

    drive = Drive()
    assert drive.open().rejection is None
    drive.traverse("trip-1", range(3), drive.t0 + MINUTE_MS)
    close = drive.road.close(drive.ev, "trip-1", drive.t0 + 10 * MINUTE_MS)
    settled = decision(drive.feed(close), "SettlementAdmitted")
    at = drive.t0 + 11 * MINUTE_MS
    opened = drive.feed(sdk.dispute_opened(
        drive.ev, dispute_id="d-trip", session_id="trip-1", station_id=drive.road.operator_id,
        kind="METER_DISPUTE", claim="segment 2 over-read", settlement_id="stl:trip-1",
        evidence_event_ids=[close.event_id], at_ms=at))
    assert opened.rejection is None, opened.rejection
    assert decision(opened, "DisputeRecorded")["settlement_id"] == "stl:trip-1"
    stranger = drive.feed(sdk.dispute_opened(
        drive.other, dispute_id="d-trip-2", session_id="trip-1",
        station_id=drive.road.operator_id, kind="METER_DISPUTE", claim="not mine",
        evidence_event_ids=[], at_ms=at))
    assert reason(stranger) == "NOT_A_SESSION_PARTY"
    assert settled["total_amount"] > 0


class PaidBy(Disputed):
    """The dispute world whose vehicle credential names a payment agent ("pay-agent")."""

    def open_ledger(self, tariff: dict[str, object]) -> None:
        world = self.world
        self.agent = world.credential("pay-agent", ["PAYMENT_AGENT"], subject_id="pay-agent")
        self.impostor = world.credential("pay-impostor", ["PAYMENT_AGENT"],
                                         subject_id="pay-impostor")
        [at] = [i for i, e in enumerate(world.governance)
                if e.event_type.endswith("CredentialIssued")
                and self.vehicle.credential_id.encode() in e.body.payload]
        world.governance[at] = world.issuer.issue_credential(
            self.vehicle, ["VEHICLE"], "US-CA", valid_from_ms=0, valid_until_ms=2**62,
            attributes={"payment_agent": "pay-agent"}, at_ms=T0_MS)
        super().open_ledger(tariff)  # type: ignore[arg-type]

    def failed(self, agent: object, vehicle_id: str = "", session_id: str = "s1") -> Step:
        return self.feed(sdk.payment_failed(
            agent, settlement_id="stl:s1", session_id=session_id,  # type: ignore[arg-type]
            station_id=self.name, vehicle_credential_id=vehicle_id or self.vehicle.credential_id,
            reason="card declined", at_ms=self.tick()))


def test_a_payment_failure_from_the_vehicles_agent_opens_a_payment_failure_dispute() -> None:
    d = PaidBy("pay")
    step = d.failed(d.agent)
    assert step.rejection is None, step.rejection
    [opened] = [p for k, p in pairs(step.decisions) if k == "DisputeRecorded"]
    assert (opened["kind"], opened["change"], opened["settlement_id"]) == (
        "PAYMENT_FAILURE", "OPENED", "stl:s1")
    assert opened["opened_by_credential_id"] == "pay-agent"
    assert opened["dispute_id"].startswith("pay:")
    void = d.feed(d.resolved(d.arbiter, "VOIDED", dispute_id=opened["dispute_id"]))
    assert void.rejection is None  # the arbiter resolves it like any dispute


def test_a_payment_failure_from_another_agent_or_for_another_vehicle_is_refused() -> None:
    d = PaidBy("pay")
    assert reason(d.failed(d.impostor)) == "NOT_THE_PAYMENT_AGENT"
    assert reason(d.failed(d.agent, vehicle_id=d.stranger.credential_id)) == (
        "NOT_THE_PAYMENT_AGENT")  # the stranger names no agent
    assert reason(d.failed(d.agent, session_id="nope")) == "UNKNOWN_SESSION"
