"""Dispute resolution (P2), pure: who may open, add evidence and resolve a dispute on a station's
ledger, and how outcomes become new settlements without touching the disputed one."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from chargemesh.processors.ledger import state as ledger
from chargemesh.processors.ingress import Admitted, Refused, admit
from chargemesh.processors.ledger.step import Step, market_step
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk.participant import Participant
from chargemesh.streams.topics import MARKET
from chargemesh.units import HOUR_MS, MINUTE_MS

from tests.support.session_world import PureStation
from tests.support.world import T0_MS, make_world, pairs

TARIFF = {"currency": "USD", "ceiling_per_kwh": "0.80", "tax_percent": "8.25",
          "rounding": "HALF_UP", "minor_units": 2}


class Disputed(PureStation):
    """A station with one settled session ("s1", 20 kWh at 0.30/kWh + 8.25% tax = 6.50 USD) fed
    through the same admission and ledger step as the processors, and the people around it."""

    def __init__(self, name: str = "dsp") -> None:
        world = make_world()
        self.world, self.name = world, name
        self.station = world.credential(f"{name}-cred", ["STATION"], subject_id=name)
        self.meter = world.credential(f"{name}-meter", ["METER"], subject_id=f"{name}-meter")
        self.vehicle = world.credential(f"{name}-ev", ["VEHICLE"], subject_id=f"{name}-ev")
        self.stranger = world.credential(f"{name}-other-ev", ["VEHICLE"],
                                         subject_id=f"{name}-other-ev")
        self.arbiter = world.credential(f"{name}-arbiter", ["ARBITER"],
                                        subject_id=f"{name}-arbiter")
        self.foreign_arbiter = self._foreign_arbiter()
        self.open_ledger(TARIFF)
        connector = sdk.connector("c1", 50_000, meter_credential_id=self.meter.credential_id)
        self.feed(sdk.calendar_published(
            self.station, rate_authority_id="auth-root", jurisdiction="US-CA",
            tariff_id=f"{name}-tariff", rules_version=f"{name}-rules", connectors=[connector],
            slot_duration_ms=HOUR_MS, horizon_start_ms=self.start_ms,
            horizon_end_ms=self.start_ms + 24 * HOUR_MS, posted_rate_per_kwh="0.30",
            currency="USD", at_ms=T0_MS))
        self.lineage = self._settle()
        self.clock_ms = self.start_ms + 2 * HOUR_MS

    def _foreign_arbiter(self) -> Participant:
        """An ARBITER credential under another authority (recognised by the root)."""
        other = Participant.seeded("auth-other", secret="tests")
        issuer = Participant.seeded("issuer-other", secret="tests")
        arbiter = Participant.seeded(f"{self.name}-foreign-arbiter", secret="tests")
        self.world.governance += [
            self.world.root.recognise_authority(other, "DE-BY", ["RATE_AUTHORITY", "ARBITER"],
                                                at_ms=T0_MS),  # it delegates what it holds
            other.delegate_issuer(issuer, ["ARBITER"], ["DE-BY"], at_ms=T0_MS),
            issuer.issue_credential(arbiter, ["ARBITER"], "DE-BY", at_ms=T0_MS)]
        return arbiter

    def admit(self, event: SignedEvent) -> Admitted | Refused:
        return admit(event.encode(), event.body.subject_key.encode(), MARKET.name, self.store)

    def feed(self, event: SignedEvent) -> Step:
        verdict = self.admit(event)
        assert isinstance(verdict, Admitted), verdict
        self.offset += 1
        return market_step(self.state, verdict, 0, self.offset, None, self.store)

    def _settle(self) -> list[str]:
        ident = sdk.identity(station_id=self.name, vehicle=self.vehicle,
                             rate_authority_id="auth-root", jurisdiction="US-CA",
                             connector_id="c1")
        terms = sdk.claim(energy_wh=20_000, start_ms=self.start_ms,
                          stop_ms=self.start_ms + HOUR_MS, ceiling_rate_per_kwh="0.50",
                          currency="USD")
        handshake = sdk.handshake(self.station, self.vehicle, session_id="s1",
                                  reservation_id="res:o1", ident=ident,
                                  started_at_ms=self.start_ms)
        reading = sdk.meter_reading(self.meter, session_id="s1", station_id=self.name,
                                    connector_id="c1", seq=1, import_wh=10_000,
                                    at_ms=self.start_ms + 20 * MINUTE_MS)
        close = sdk.meter_closed_out(self.station, session_id="s1", connector_id="c1",
                                     closed_at_ms=self.start_ms + 40 * MINUTE_MS,
                                     final_import_wh=20_000, last_reading_seq=1)
        steps = [self.feed(sdk.order(self.vehicle, "posted", order_id="o1", ident=ident,
                                     terms=terms, rate_per_kwh="0.30", at_ms=T0_MS + 1)),
                 self.feed(handshake), self.feed(reading), self.feed(close),
                 self.feed(sdk.close_out_countersigned(self.vehicle, close,
                                                       self.start_ms + 41 * MINUTE_MS))]
        assert [s.rejection for s in steps] == [None] * 5
        assert steps[3].decisions[0].payload["total_amount"] == Decimal("6.50")
        return [handshake.event_id, reading.event_id, close.event_id]

    def tick(self) -> int:
        self.clock_ms += MINUTE_MS
        return self.clock_ms

    def open(self, party: Participant, dispute_id: str = "d1", kind: str = "METER_DISPUTE",
             session_id: str = "s1", settlement_id: str = "stl:s1",
             evidence: list[str] | None = None) -> Step:
        return self.feed(sdk.dispute_opened(
            party, dispute_id=dispute_id, session_id=session_id, station_id=self.name, kind=kind,
            claim="the meter over-read by 5 kWh", settlement_id=settlement_id,
            evidence_event_ids=self.lineage[2:] if evidence is None else evidence,
            at_ms=self.tick()))

    def evidence(self, party: Participant, ids: list[str], dispute_id: str = "d1") -> Step:
        return self.feed(sdk.dispute_evidence(
            party, dispute_id=dispute_id, session_id="s1", station_id=self.name,
            evidence_event_ids=ids, statement="calibration log attached", at_ms=self.tick()))

    def resolved(self, arbiter: Participant, outcome: str, amount: str = "0",
                 dispute_id: str = "d1", currency: str = "USD") -> SignedEvent:
        return sdk.dispute_resolved(arbiter, dispute_id=dispute_id, session_id="s1",
                                    station_id=self.name, outcome=outcome, reasoning="reviewed",
                                    adjustment_amount=amount, currency=currency,
                                    at_ms=self.tick())


def kinds(step: Step) -> list[str]:
    return [kind for kind, _ in pairs(step.decisions)]


def reason(step: Step) -> str:
    assert step.rejection is not None, step.decisions
    assert step.decisions == [], step.decisions  # a refused change decides nothing
    return step.rejection.reason


def record(step: Step) -> dict[str, Any]:
    return next(p for kind, p in pairs(step.decisions) if kind == "DisputeRecorded")


def test_the_vehicle_opens_a_meter_dispute_on_its_settled_session() -> None:
    d = Disputed()
    step = d.open(d.vehicle)
    assert step.rejection is None and kinds(step) == ["DisputeRecorded"]
    opened = record(step)
    assert (opened["change"], opened["status"], opened["seq"]) == ("OPENED", "OPEN", 0)
    assert opened["settlement_id"] == "stl:s1" and opened["kind"] == "METER_DISPUTE"
    assert opened["opened_by_credential_id"] == d.vehicle.credential_id
    assert opened["rate_authority_id"] == "auth-root" and opened["currency"] == "USD"
    assert opened["evidence_event_ids"] == d.lineage[2:]


def test_a_party_not_in_the_session_cannot_open_a_dispute() -> None:
    d = Disputed()
    assert reason(d.open(d.stranger)) == "NOT_A_SESSION_PARTY"
    assert d.state.extra.get("disputes", {}) == {}


def test_disputes_on_unknown_sessions_settlements_or_evidence_are_refused() -> None:
    d = Disputed()
    assert reason(d.open(d.vehicle, session_id="s-none")) == "UNKNOWN_SESSION"
    assert reason(d.open(d.vehicle, settlement_id="stl:other")) == "UNKNOWN_SETTLEMENT"
    assert reason(d.open(d.vehicle, evidence=["not-an-event"])) == "UNKNOWN_EVIDENCE"
    assert reason(d.open(d.vehicle, kind="UNKNOWN")) == "INVALID_DISPUTE"
    assert d.open(d.station).rejection is None  # the station is a party too
    assert reason(d.open(d.vehicle, dispute_id="d2")) == "DISPUTE_ALREADY_OPEN"
    assert reason(d.open(d.vehicle)) == "DUPLICATE_DISPUTE"


def test_either_party_adds_evidence_but_nobody_else() -> None:
    d = Disputed()
    d.open(d.vehicle)
    added = record(d.evidence(d.station, d.lineage[:2]))
    assert (added["change"], added["seq"], added["status"]) == ("EVIDENCE_ADDED", 1, "OPEN")
    assert added["evidence_event_ids"] == d.lineage[2:] + d.lineage[:2]
    assert added["actor_credential_id"] == d.station.credential_id
    assert reason(d.evidence(d.stranger, d.lineage[:1])) == "NOT_A_SESSION_PARTY"
    assert reason(d.evidence(d.vehicle, ["forged-id"])) == "UNKNOWN_EVIDENCE"
    assert reason(d.evidence(d.vehicle, d.lineage, dispute_id="d-none")) == "UNKNOWN_DISPUTE"


def test_only_the_rate_authority_or_its_arbiter_resolves() -> None:
    d = Disputed()
    d.open(d.vehicle)
    assert reason(d.feed(d.resolved(d.foreign_arbiter, "UPHELD"))) == "NOT_THE_ARBITER"
    by_station = d.admit(d.resolved(d.station, "UPHELD"))  # a party judging its own case
    assert isinstance(by_station, Refused)
    assert by_station.rejection.reason == "ROLE_NOT_PERMITTED"
    assert d.state.extra["disputes"]["d1"]["status"] == "OPEN"
    upheld = d.feed(d.resolved(d.arbiter, "UPHELD"))
    assert kinds(upheld) == ["DisputeRecorded"]  # the settlement stands: nothing new issued
    assert (record(upheld)["status"], record(upheld)["outcome"]) == ("RESOLVED", "UPHELD")


def test_adjusted_outcome_issues_a_final_adjustment_settlement_and_resolves_once() -> None:
    d = Disputed()
    d.open(d.vehicle)
    step = d.feed(d.resolved(d.world.root, "ADJUSTED", "-1.50"))
    assert step.rejection is None
    assert kinds(step) == ["DisputeRecorded", "SettlementAdmitted", "SettlementFinalised"]
    adjustment = step.decisions[1].payload
    assert adjustment["kind"] == "ADJUSTMENT" and adjustment["adjusts_settlement_id"] == "stl:s1"
    assert adjustment["settlement_id"] == "adj:s1:d1"  # a new settlement, not stl:s1 again
    assert [(ln["kind"], ln["amount"]) for ln in adjustment["lines"]] == [
        ("ADJUSTMENT", Decimal("-1.50")), ("TAX", Decimal("-0.12"))]  # 8.25% of 1.50 = 0.12375
    assert adjustment["total_amount"] == Decimal("-1.62") == sum(
        ln["amount"] for ln in adjustment["lines"])
    assert adjustment["required_signer_ids"] == ["auth-root"]
    assert step.decisions[2].payload["signer_ids"] == ["auth-root"]
    resolved = record(step)
    assert resolved["adjustment_settlement_id"] == "adj:s1:d1"
    assert resolved["adjustment_total"] == Decimal("-1.62")
    assert d.state.extra["sessions"]["s1"]["settlement_id"] == "stl:s1"  # the original stands
    again = d.feed(d.resolved(d.arbiter, "VOIDED"))
    assert reason(again) == "DISPUTE_ALREADY_RESOLVED"


def test_void_credits_every_line_issued_so_far_and_closes_the_settlement() -> None:
    d = Disputed()
    d.open(d.vehicle)
    d.feed(d.resolved(d.arbiter, "ADJUSTED", "-1.50"))
    d.open(d.station, dispute_id="d2", kind="PAYMENT_FAILURE")
    void = d.feed(d.resolved(d.arbiter, "VOIDED", dispute_id="d2"))
    credit = void.decisions[1].payload
    assert credit["kind"] == "CREDIT" and credit["adjusts_settlement_id"] == "stl:s1"
    assert credit["total_amount"] == Decimal("-4.88")  # 6.50 charged - 1.62 adjusted
    assert [ln["kind"] for ln in credit["lines"]] == ["ENERGY", "TAX", "ADJUSTMENT", "TAX"]
    assert credit["lines"][0]["quantity_wh"] == -20_000
    assert reason(d.open(d.vehicle, dispute_id="d3")) == "SETTLEMENT_VOIDED"


def test_corrections_are_bounded_and_in_the_settlement_currency() -> None:
    d = Disputed()
    d.open(d.vehicle)
    assert reason(d.feed(d.resolved(d.arbiter, "ADJUSTED", "-7.00"))) == (
        "ADJUSTMENT_EXCEEDS_SETTLEMENT")
    assert reason(d.feed(d.resolved(d.arbiter, "ADJUSTED", "-1", currency="EUR"))) == (
        "CURRENCY_MISMATCH")
    assert reason(d.feed(d.resolved(d.arbiter, "ADJUSTED", "0.001"))) == "INVALID_ADJUSTMENT"
    assert reason(d.feed(d.resolved(d.arbiter, "UPHELD", "1.00"))) == "INVALID_ADJUSTMENT"
    assert reason(d.feed(d.resolved(d.arbiter, "ADJUSTED", "7.00"))) == "ADJUSTMENT_TOO_LARGE"
    assert d.feed(d.resolved(d.arbiter, "ADJUSTED", "0.80")).rejection is None  # a surcharge


def test_an_interrupted_charge_is_disputed_before_it_settles() -> None:
    d = Disputed()
    ident = sdk.identity(station_id=d.name, vehicle=d.vehicle, rate_authority_id="auth-root",
                         jurisdiction="US-CA", connector_id="c1")
    start = d.start_ms + 3 * HOUR_MS
    terms = sdk.claim(energy_wh=20_000, start_ms=start, stop_ms=start + HOUR_MS,
                      ceiling_rate_per_kwh="0.50", currency="USD")
    d.feed(sdk.order(d.vehicle, "posted", order_id="o2", ident=ident, terms=terms,
                     rate_per_kwh="0.30", at_ms=d.clock_ms))
    d.feed(sdk.handshake(d.station, d.vehicle, session_id="s2", reservation_id="res:o2",
                         ident=ident, started_at_ms=start))
    d.clock_ms = start + 5 * MINUTE_MS
    assert reason(d.open(d.vehicle, "d9", session_id="s2", settlement_id="",
                         evidence=[])) == "NO_SETTLEMENT"  # a meter dispute needs a settlement
    opened = d.open(d.vehicle, "d9", kind="INTERRUPTED_CHARGE", session_id="s2",
                    settlement_id="", evidence=[])
    assert record(opened)["settlement_id"] == ""
    void = d.feed(sdk.dispute_resolved(d.arbiter, dispute_id="d9", session_id="s2",
                                       station_id=d.name, outcome="VOIDED", reasoning="r",
                                       currency="USD", at_ms=d.tick()))
    assert reason(void) == "NO_SETTLEMENT"


def test_dispute_state_survives_a_save_and_restore_of_the_ledger() -> None:
    d = Disputed()
    d.open(d.vehicle)
    d.feed(d.resolved(d.arbiter, "ADJUSTED", "-1.50"))
    d.state = ledger.load_state(ledger.dump_state(d.state))
    held = d.state.extra["disputed_settlements"]["stl:s1"]
    assert held["net_total"] == Decimal("4.88") and isinstance(held["net_total"], Decimal)
    assert reason(d.feed(d.resolved(d.arbiter, "UPHELD"))) == "DISPUTE_ALREADY_RESOLVED"
    assert d.open(d.station, dispute_id="d2").rejection is None


def test_disputes_written_before_station_id_existed_still_decode() -> None:
    """Lineage is kept for years: the first dispute schemas stay readable (schemas/avro/history)."""
    import io
    import json
    from importlib import resources

    import fastavro
    from chargemesh.schemas.codec import catalog, load_schema_json

    root = resources.files("chargemesh.schemas").joinpath("avro", "history")
    old = json.loads(root.joinpath("chargemesh.dispute.v1.DisputeOpened.0.avsc").read_text())
    record = {"dispute_id": "d-old", "session_id": "s-old", "settlement_id": "stl:s-old",
              "kind": "METER_DISPUTE", "claim": "old claim", "opened_at_ms": T0_MS}
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(old), record)
    name, decoded = catalog().decode(load_schema_json(old).fingerprint, buffer.getvalue())
    assert name == "chargemesh.dispute.v1.DisputeOpened"
    assert decoded == dict(record, station_id="", evidence_event_ids=[])
