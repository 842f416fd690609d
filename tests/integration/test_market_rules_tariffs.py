"""Issue 16, tariffs and claims (M3, C2), on the real stack.

* A tariff filing whose currency is no ISO 4217 code, or whose minor units are not the
  currency's, is refused with its reason on ``chargemesh.rejections.v1`` and in ClickHouse
  ``rejections``; a JPY filing with 0 minor units is admitted.
* An order whose claim declares adders other than the filed tariff's is refused
  ``ADDERS_MISMATCH``; its twin declaring the filed ones is booked.
* A session over a UTC midnight at which the authority's new version of the tariff takes effect
  bills the part before midnight under the old version and the part after under the new one, at
  the new version's night time-of-use band, each with its own adders and tax.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.sdk.participant import now_ms
from chargemesh.streams.topics import REJECTIONS
from chargemesh.units import HOUR_MS

from tests.conftest import Mesh
from tests.integration.test_sessions_pipeline import Session, settlement_records
from tests.support.market import SLOT_MS, open_market

pytestmark = pytest.mark.integration

DAY_MS = 24 * HOUR_MS


def rejected(mesh: Mesh, events: list[SignedEvent]) -> dict[str, str]:
    """The reason codes of ``events`` on the rejections topic, then in ClickHouse."""
    wanted = {e.event_id for e in events}
    reader = mesh.reader(REJECTIONS.name)
    try:
        reader.wait_for(lambda rs: wanted <= {r.rejection()["event_id"] for r in rs},
                        timeout_s=60, workers=(mesh.worker,))
        on_topic = {r.rejection()["event_id"]: str(r.rejection()["reason_code"])
                    for r in reader.records if r.rejection()["event_id"] in wanted}
    finally:
        reader.close()
    rows = mesh.wait_rows("SELECT event_id, reason_code FROM rejections FINAL "
                          "WHERE event_id IN %(ids)s", {"ids": tuple(wanted)}, count=len(wanted))
    assert dict(rows) == on_topic
    return on_topic


def test_a_filing_must_name_an_iso_4217_currency_with_its_minor_units(mesh: Mesh) -> None:
    t, root = now_ms(), mesh.world.root
    fake = sdk.tariff_filed(root, tariff_id="mr3-xyz", jurisdiction="US-CA", currency="XYZ",
                            ceiling_per_kwh="0.80", at_ms=t)
    yen_cents = sdk.tariff_filed(root, tariff_id="mr3-jpy-2", jurisdiction="US-CA",
                                 currency="JPY", ceiling_per_kwh="80", minor_units=2, at_ms=t)
    yen = sdk.tariff_filed(root, tariff_id="mr3-jpy", jurisdiction="US-CA", currency="JPY",
                           ceiling_per_kwh="80", minor_units=0, rounding="HALF_EVEN", at_ms=t)
    mesh.publish(fake, yen_cents, yen)
    reasons = rejected(mesh, [fake, yen_cents])
    assert reasons == {fake.event_id: "UNKNOWN_CURRENCY",
                       yen_cents.event_id: "MINOR_UNITS_MISMATCH"}
    rows = mesh.wait_rows("SELECT event_id FROM events WHERE event_id = %(e)s",
                          {"e": yen.event_id})
    assert rows == [(yen.event_id,)]


def test_a_claim_with_adders_other_than_the_filed_ones_is_refused(mesh: Mesh) -> None:
    t = now_ms()
    market = open_market(mesh, "mr3-add", t, [sdk.connector("c1", 50_000)],
                         tariff={"tax_percent": "8.25", "congestion_fee_per_kwh": "0.02"})
    vehicle = market.vehicle("ev")
    mesh.publish(*mesh.world.governance)
    mesh.world.governance.clear()

    def adder(kind: str, rate: str = "0", percent: str = "0") -> dict[str, Any]:
        return {"kind": kind, "rate_per_kwh": Decimal(rate), "percent": Decimal(percent),
                "label": kind.lower()}

    filed = [adder("TAX", percent="8.25"), adder("CONGESTION_FEE", "0.02")]
    cheaper = market.posted_order(vehicle, "cheap", market.start_ms,
                                  adders=[adder("TAX", percent="1")])
    honest = market.posted_order(vehicle, "honest", market.start_ms + SLOT_MS, adders=filed)
    mesh.publish(cheaper, honest)
    assert rejected(mesh, [cheaper]) == {cheaper.event_id: "ADDERS_MISMATCH"}
    rows = mesh.wait_rows("SELECT order_id FROM slot_ledger FINAL WHERE order_id = %(o)s",
                          {"o": market.order_id("honest")})
    assert rows == [(market.order_id("honest"),)]


def test_a_session_over_midnight_bills_each_part_under_the_tariff_in_force(mesh: Mesh) -> None:
    t = now_ms()
    market = open_market(mesh, "mr3-night", t, [sdk.connector("c1", 150_000)], hours=48,
                         tariff={"tax_percent": "10", "congestion_fee_per_kwh": "0.02"},
                         posted="0.40")
    midnight = (market.start_ms // DAY_MS + 1) * DAY_MS  # within the day the calendar opens
    new_version = sdk.tariff_filed(
        mesh.world.root, tariff_id=market.tariff_id, jurisdiction="US-CA", currency="USD",
        ceiling_per_kwh="0.80", tax_percent="5", congestion_fee_per_kwh="0.03",
        time_of_use=[(0, 6 * 60, "0.20")], effective_from_ms=midnight, at_ms=t)
    vehicle = market.vehicle("ev")
    mesh.publish(*mesh.world.governance, new_version)
    mesh.world.governance.clear()
    session = Session(market, vehicle, "s1", midnight - 2 * SLOT_MS, slots=4, energy_wh=40_000)
    mesh.publish(session.booking, session.start(), session.read(15, 6_000),
                 session.read(30, 11_000), session.read(45, 16_000))
    close = session.close(50, 18_000)
    mesh.publish(close)
    _, settlement = settlement_records(mesh, session.session_id,
                                       {"SettlementAdmitted"})["SettlementAdmitted"]
    got = [(ln["kind"], ln["quantity_wh"], ln["unit_rate_per_kwh"], ln["amount"])
           for ln in settlement["lines"]]
    assert got == [
        # before midnight: 10 kWh at the booked 0.40, the old fee 0.02, 10% tax
        ("ENERGY", 10_000, Decimal("0.40"), Decimal("4.00")),
        ("CONGESTION_FEE", 10_000, Decimal("0.02"), Decimal("0.20")),
        ("TAX", 0, Decimal(0), Decimal("0.42")),
        # after: 7 kWh in the new version's night band, its fee 0.03, 5% tax
        ("ENERGY", 7_000, Decimal("0.20"), Decimal("1.40")),
        ("CONGESTION_FEE", 7_000, Decimal("0.03"), Decimal("0.21")),
        ("TAX", 0, Decimal(0), Decimal("0.08")),  # 5% of 1.61 = 0.0805
    ]
    assert settlement["total_amount"] == Decimal("6.31")
    rows = mesh.wait_rows("SELECT count() FROM settlement_lines FINAL "
                          "WHERE settlement_id = %(s)s HAVING count() = 6",
                          {"s": settlement["settlement_id"]})
    assert rows == [(6,)]
