"""P1 cross-jurisdiction roaming: without a reciprocity agreement between the vehicle's authority
and the station's rate authority an order is refused before any energy flows; with one, the
session is admitted and the station's foreign filed rates, currency and tax apply."""

from __future__ import annotations

from decimal import Decimal

import pytest

from chargemesh.infra.stack.worker import Record, TopicReader
from chargemesh.processors.ledger.state import roaming_problem
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.sdk.participant import Participant, now_ms
from chargemesh.streams.topics import ADMITTED, DECISIONS

from tests.conftest import Mesh
from tests.support.market import open_market
from tests.integration.test_sessions_pipeline import Session, settlement_records
from tests.support.world import T0_MS, make_world

EU_TARIFF = {"tax_percent": "19", "rounding": "HALF_EVEN", "minor_units": 2,
             "congestion_fee_per_kwh": "0.01"}


def foreign_authority(name: str, root: Participant) -> tuple[Participant, list]:
    eu = Participant.seeded(name, secret="tests")
    return eu, [root.recognise_authority(eu, "DE-BY", ["AUTHORITY", "RATE_AUTHORITY"],
                                         at_ms=T0_MS),
                eu.declare_authority("EU roaming authority", "DE-BY",
                                     ["AUTHORITY", "RATE_AUTHORITY"], "EUR", at_ms=T0_MS)]


def test_roaming_rule_in_the_trust_store() -> None:
    world = make_world()
    eu, events = foreign_authority("auth-eu-unit", world.root)
    world.governance += events
    vehicle = world.credential("v-unit", ["VEHICLE"])
    store = world.store()
    at = T0_MS + 1
    assert store.home_authority(vehicle.credential_id, at) == world.root.credential_id
    assert store.home_authority(eu.credential_id, at) == eu.credential_id
    assert roaming_problem(store, vehicle.credential_id, world.root.credential_id, at) is None
    refused = roaming_problem(store, vehicle.credential_id, eu.credential_id, at)
    assert refused is not None and refused.reason == "NO_RECIPROCITY"
    world.governance.append(sdk.reciprocity_agreed(world.root, eu, agreement_id="a1",
                                                   valid_from_ms=at, valid_until_ms=at + 1000,
                                                   at_ms=T0_MS))
    store = world.store()
    assert roaming_problem(store, vehicle.credential_id, eu.credential_id, at) is None
    expired = roaming_problem(store, vehicle.credential_id, eu.credential_id, at + 1000)
    assert expired is not None and expired.reason == "NO_RECIPROCITY"


def _decision(records: list[Record], kind: str, order_id: str) -> dict | None:
    for r in records:
        event = r.event()
        if event.event_type.endswith(kind) and r.payload().get("order_id") == order_id:
            return r.payload()
    return None


@pytest.mark.integration
def test_roaming_without_reciprocity_is_refused_with_it_foreign_rates_apply(mesh: Mesh) -> None:
    world = mesh.world
    eu, events = foreign_authority("auth-eu-roam", world.root)
    mesh.publish(*events)
    t = now_ms()
    market = open_market(mesh, "roam", t, [sdk.connector("c1", 150_000)], hours=6,
                         authority=eu, jurisdiction="DE-BY", currency="EUR",
                         posted="0.550000", ceiling="0.90", tariff=EU_TARIFF,
                         grid_zone_id="zone-roam")
    vehicle = market.vehicle("ev")  # credentialed under the root authority (US-CA)
    mesh.publish(*world.governance)
    world.governance.clear()
    decisions = TopicReader(mesh.settings, DECISIONS.name)

    refused_session = Session(market, vehicle, "before", market.start_ms)
    mesh.publish(refused_session.booking)
    refused_id = market.order_id(refused_session.order_id)
    decisions.wait_for(lambda rs: _decision(rs, "OrderRejected", refused_id) is not None,
                       timeout_s=45, workers=(mesh.worker,))
    rejection = _decision(decisions.records, "OrderRejected", refused_id)
    assert rejection is not None and rejection["reason_code"] == "NO_RECIPROCITY"
    assert world.root.credential_id in rejection["detail"]

    agreement = sdk.reciprocity_agreed(world.root, eu, agreement_id="root-eu-roaming",
                                       at_ms=t)
    admitted = TopicReader(mesh.settings, ADMITTED.name)
    mesh.publish(agreement)
    admitted.wait_for(lambda rs: any(r.event().event_id == agreement.event_id for r in rs),
                      timeout_s=45, workers=(mesh.worker,))
    admitted.close()

    session = Session(market, vehicle, "after", market.start_ms + 60 * 60_000)
    mesh.publish(session.booking)
    booked_id = market.order_id(session.order_id)
    decisions.wait_for(lambda rs: _decision(rs, "SlotReserved", booked_id) is not None,
                       timeout_s=45, workers=(mesh.worker,))
    decisions.close()
    mesh.publish(session.start(), session.read(10, 9_000), session.read(20, 17_500))
    close = session.close(25, 21_250)
    mesh.publish(close, sdk.close_out_countersigned(vehicle, close,
                                                    session.start_ms + 26 * 60_000))
    found = settlement_records(mesh, session.session_id,
                               {"SettlementAdmitted", "SettlementFinalised"})
    _, settlement = found["SettlementAdmitted"]
    assert settlement["currency"] == "EUR" and settlement["tariff_id"] == market.tariff_id
    assert settlement["identity"]["rate_authority_id"] == eu.credential_id
    by_kind = {ln["kind"]: ln for ln in settlement["lines"]}
    assert set(by_kind) >= {"ENERGY", "TAX", "CONGESTION_FEE"}
    energy_kwh = Decimal(20_250) / 1000
    assert by_kind["ENERGY"]["amount"] == (energy_kwh * Decimal("0.55")).quantize(Decimal("0.01"))
    assert sum(ln["amount"] for ln in settlement["lines"]) == settlement["total_amount"]
    rows = mesh.wait_rows("SELECT currency, total_amount FROM settlements FINAL "
                          "WHERE session_id = %(s)s", {"s": session.session_id})
    assert rows[0][0] == "EUR" and rows[0][1] == settlement["total_amount"]
