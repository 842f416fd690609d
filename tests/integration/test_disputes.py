"""P2 on the real stack: a settled session is disputed, a stranger and a non-arbiter are turned
away with their reasons, the rate authority adjusts it, and the correction is a new settlement
on the billing feed and in ClickHouse while the original stays exactly as it was."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from chargemesh.infra.cli.main import cli
from chargemesh.infra.stack.worker import Record, TopicReader
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk.participant import Participant, now_ms
from chargemesh.streams.topics import DISPUTES, REJECTIONS, SETTLEMENTS
from click.testing import CliRunner

from tests.conftest import Mesh
from tests.support.market import SLOT_MS, open_market
from tests.integration.test_sessions_pipeline import MINUTE_MS, TARIFF, Session

pytestmark = pytest.mark.integration
WAIT_S = 45.0


def foreign_arbiter(mesh: Mesh, prefix: str) -> Participant:
    """An ARBITER credential under another authority than the station's rate authority."""
    world = mesh.world
    other = Participant.seeded(f"{prefix}-auth-other", secret="tests")
    issuer = Participant.seeded(f"{prefix}-issuer-other", secret="tests")
    arbiter = Participant.seeded(f"{prefix}-foreign-arbiter", secret="tests")
    world.governance += [
        world.root.recognise_authority(other, "DE-BY", ["RATE_AUTHORITY", "ARBITER"]),
        other.delegate_issuer(issuer, ["ARBITER"], ["DE-BY"]),
        issuer.issue_credential(arbiter, ["ARBITER"], "DE-BY")]
    return arbiter


def wait_records(mesh: Mesh, topic: str, key: str,
                 done: Any) -> dict[str, tuple[SignedEvent, dict[str, Any]]]:
    """Records of ``topic`` under ``key`` by event id (redeliveries collapse), once ``done``."""
    reader = TopicReader(mesh.settings, topic)

    def by_id(rs: list[Record]) -> dict[str, tuple[SignedEvent, dict[str, Any]]]:
        return {r.event().event_id: (r.event(), r.payload()) for r in rs
                if r.key == key.encode()}

    try:
        reader.wait_for(lambda rs: done(list(by_id(rs).values())), timeout_s=WAIT_S,
                        workers=(mesh.worker,))
        return by_id(reader.records)
    finally:
        reader.close()


def rejection_reasons(mesh: Mesh, event_ids: set[str]) -> dict[str, str]:
    reader = TopicReader(mesh.settings, REJECTIONS.name)
    try:
        reader.wait_for(lambda rs: event_ids <= {r.rejection()["event_id"] for r in rs},
                        timeout_s=WAIT_S, workers=(mesh.worker,))
        return {r.rejection()["event_id"]: r.rejection()["reason_code"] for r in reader.records
                if r.rejection()["event_id"] in event_ids}
    finally:
        reader.close()


def test_a_meter_dispute_is_adjusted_by_the_rate_authority_with_a_new_settlement(
        mesh: Mesh) -> None:
    world = mesh.world
    market = open_market(mesh, "p2", now_ms(), [sdk.connector("c1", 150_000)], tariff=TARIFF,
                         grid_zone_id="zone-p2")
    vehicle, stranger = market.vehicle("ev"), market.vehicle("stranger")
    arbiter = world.credential("p2-arbiter", ["ARBITER"], subject_id="p2-arbiter")
    outsider = foreign_arbiter(mesh, "p2")
    mesh.publish(*world.governance)
    world.governance.clear()

    # A session settles (the vehicle countersigns: final).
    session = Session(market, vehicle, "s1", market.start_ms + SLOT_MS)
    start, reading = session.start(), session.read(10, 12_000)
    close = session.close(20, 21_000)
    mesh.publish(session.booking, start, reading, close,
                 sdk.close_out_countersigned(vehicle, close, session.start_ms + 21 * MINUTE_MS))
    settlement_id = f"stl:{session.session_id}"
    feed = wait_records(mesh, SETTLEMENTS.name, session.session_id,
                        lambda rs: any(e.event_type.endswith("Finalised") for e, _ in rs))
    original = next(p for e, p in feed.values() if e.event_type.endswith("SettlementAdmitted"))
    assert original["settlement_id"] == settlement_id and original["kind"] == "CHARGE"

    # The dispute, in the station's ledger order.
    at = session.start_ms + 30 * MINUTE_MS
    where = {"session_id": session.session_id, "station_id": market.station_id}
    opened = sdk.dispute_opened(vehicle, dispute_id="p2-d1", kind="METER_DISPUTE",
                                claim="the meter over-read", settlement_id=settlement_id,
                                evidence_event_ids=[reading.event_id, close.event_id],
                                at_ms=at, **where)
    strangers = sdk.dispute_opened(stranger, dispute_id="p2-dx", kind="PAYMENT_FAILURE",
                                   claim="not mine to open", evidence_event_ids=[],
                                   at_ms=at + 1_000, **where)
    evidence = sdk.dispute_evidence(market.station, dispute_id="p2-d1", evidence_event_ids=[
        start.event_id], statement="calibration certificate", at_ms=at + 2_000, **where)
    by_station = sdk.dispute_resolved(market.station, dispute_id="p2-d1", outcome="UPHELD",
                                      reasoning="our meter is right", at_ms=at + 3_000, **where)
    by_outsider = sdk.dispute_resolved(outsider, dispute_id="p2-d1", outcome="VOIDED",
                                       currency="USD", reasoning="void", at_ms=at + 4_000,
                                       **where)
    adjusted = sdk.dispute_resolved(world.root, dispute_id="p2-d1", outcome="ADJUSTED",
                                    adjustment_amount="-2.00", currency="USD",
                                    reasoning="meter drift of 5 kWh", at_ms=at + 5_000, **where)
    twice = sdk.dispute_resolved(arbiter, dispute_id="p2-d1", outcome="VOIDED", currency="USD",
                                 reasoning="again", at_ms=at + 6_000, **where)
    still_open = sdk.dispute_opened(market.station, dispute_id="p2-d2", kind="PAYMENT_FAILURE",
                                    claim="the vehicle's payment bounced", evidence_event_ids=[],
                                    at_ms=at + 7_000, **where)
    mesh.publish(opened, strangers, evidence, by_station, by_outsider, adjusted, twice, still_open)

    refused = {strangers.event_id: "NOT_A_SESSION_PARTY",
               by_station.event_id: "ROLE_NOT_PERMITTED", by_outsider.event_id: "NOT_THE_ARBITER",
               twice.event_id: "DISPUTE_ALREADY_RESOLVED"}
    assert rejection_reasons(mesh, set(refused)) == refused

    # The correction: a new, final ADJUSTMENT settlement naming the original, on the billing feed.
    feed = wait_records(mesh, SETTLEMENTS.name, session.session_id, lambda rs: sum(
        e.event_type.endswith("Finalised") for e, _ in rs) >= 2)
    admitted = [p for e, p in feed.values() if e.event_type.endswith("SettlementAdmitted")]
    adjustment_id = f"adj:{session.session_id}:p2-d1"
    assert [p["settlement_id"] for p in admitted] == [settlement_id, adjustment_id]
    assert admitted[0] == original  # the disputed settlement was not re-issued or changed
    adjustment = admitted[1]
    assert (adjustment["kind"], adjustment["adjusts_settlement_id"]) == ("ADJUSTMENT",
                                                                         settlement_id)
    assert [(ln["kind"], ln["amount"]) for ln in adjustment["lines"]] == [
        ("ADJUSTMENT", Decimal("-2.00")), ("TAX", Decimal("-0.17"))]  # 8.25% of 2.00, half up
    assert adjustment["total_amount"] == Decimal("-2.17")
    finalised = [p for e, p in feed.values() if e.event_type.endswith("SettlementFinalised")
                 and p["settlement_id"] == adjustment["settlement_id"]]
    assert finalised[0]["signer_ids"] == [world.root.credential_id]

    # The outcome is a signed record in the dispute's lineage.
    records = wait_records(mesh, DISPUTES.name, session.session_id, lambda rs: len(rs) >= 4)
    changes = sorted((p["dispute_id"], p["seq"], p["change"], p["actor_credential_id"])
                     for _, p in records.values())
    assert changes == [
        ("p2-d1", 0, "OPENED", vehicle.credential_id),
        ("p2-d1", 1, "EVIDENCE_ADDED", market.station.credential_id),
        ("p2-d1", 2, "RESOLVED", world.root.credential_id),
        ("p2-d2", 0, "OPENED", market.station.credential_id)]

    # ClickHouse: open and closed disputes, the correction next to the untouched original.
    current = mesh.wait_rows(
        "SELECT dispute_id, status, outcome, evidence_count, adjustment_total FROM "
        "disputes_current WHERE station_id = %(st)s ORDER BY dispute_id",
        {"st": market.station_id}, count=2)
    assert current == [("p2-d1", "RESOLVED", "ADJUSTED", 3, Decimal("-2.17")),
                       ("p2-d2", "OPEN", "", 0, Decimal(0))]
    open_ids = mesh.query("SELECT dispute_id FROM disputes_current WHERE status = 'OPEN' AND "
                          "station_id = %(st)s", {"st": market.station_id})
    assert open_ids == [("p2-d2",)]
    net = mesh.wait_rows("SELECT charged_amount, adjusted_amount, net_amount, corrections, voided"
                         " FROM settlements_net WHERE settlement_id = %(s)s AND corrections = 1",
                         {"s": settlement_id})
    assert net == [(original["total_amount"], Decimal("-2.17"),
                    original["total_amount"] - Decimal("2.17"), 1, 0)]
    linked = mesh.wait_rows("SELECT adjusts_settlement_id, dispute_id, outcome, total_amount "
                            "FROM settlement_adjustments WHERE session_id = %(s)s AND "
                            "dispute_id != ''", {"s": session.session_id})
    assert linked == [(settlement_id, "p2-d1", "ADJUSTED", Decimal("-2.17"))]
    statuses = mesh.wait_rows("SELECT settlement_id, kind, status FROM settlements_status WHERE "
                              "session_id = %(s)s AND status = 'FINAL' ORDER BY settlement_id",
                              {"s": session.session_id}, count=2)
    assert [row[:2] for row in statuses] == [(adjustment["settlement_id"], "ADJUSTMENT"),
                                             (settlement_id, "CHARGE")]
    in_rejections = mesh.wait_rows("SELECT reason_code FROM rejections WHERE event_id = %(e)s",
                                   {"e": strangers.event_id})
    assert in_rejections[0] == ("NOT_A_SESSION_PARTY",)

    # The CLI reads the same.
    env = {**mesh.settings.as_environ(), "COLUMNS": "200", "CHARGEMESH_CONFIG": None}
    listed = CliRunner().invoke(cli, ["disputes", "list", "--open", "--station",
                                      market.station_id], env=env, catch_exceptions=False)
    assert listed.exit_code == 0 and "p2-d2" in listed.output and "p2-d1" not in listed.output
    shown = CliRunner().invoke(cli, ["disputes", "show", "p2-d1"], env=env,
                               catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    assert "EVIDENCE_ADDED" in shown.output and "-2.17" in shown.output
