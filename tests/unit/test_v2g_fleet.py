"""E3 V2G and E4 fleet depot, pure: the station's ledger fed through the same admission and
step as the processors. V2G meters two registers and settles two-sided at the grid operator's
clearing price; a fleet charging its own vehicles settles as an internal accounting entry."""

from __future__ import annotations

import json
from decimal import Decimal
from importlib import resources
from typing import Any

from chargemesh.processors.ingress import Admitted, admit
from chargemesh.processors.ledger.step import Step, market_step
from chargemesh.schemas.codec import SchemaCatalog, catalog, load_schema_json
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk.participant import Participant
from chargemesh.streams.topics import MARKET
from chargemesh.units import HOUR_MS, MINUTE_MS

from tests.support.session_world import PureStation
from tests.support.world import T0_MS, World, make_world, pairs

ZONE = "zone-v2g-pure"


class Depot(PureStation):
    """One station (one connector) and one vehicle; credentials may carry fleet attributes."""

    def __init__(self, name: str, *, power_w: int = 11_000, bidirectional: bool = True,
                 grid_program: bool = True, tariff: dict[str, Any] | None = None,
                 station_attributes: dict[str, str] | None = None,
                 vehicle_attributes: dict[str, str] | None = None) -> None:
        world: World = make_world()
        self.world, self.name = world, name
        self.station = world.credential(f"{name}-cred", ["STATION"], subject_id=name,
                                        attributes=station_attributes)
        self.meter = world.credential(f"{name}-meter", ["METER"], subject_id=f"{name}-meter")
        self.vehicle = world.credential(f"{name}-ev", ["VEHICLE"], subject_id=f"{name}-ev",
                                        attributes=vehicle_attributes)
        self.operator = world.grid_operator(f"{name}-op", ZONE, subject_id=f"{name}-op")
        if grid_program:
            world.governance.append(sdk.grid_program(
                self.operator, grid_zone_id=ZONE, program="V2G",
                operator_ids=[self.operator.credential_id], at_ms=T0_MS))
        filed = {"currency": "USD", "ceiling_per_kwh": "0.80", "tax_percent": "10",
                 "rounding": "HALF_UP", **(tariff or {})}
        self.open_ledger(filed)
        connector = sdk.connector("c1", power_w, kind="AC_L2", bidirectional=bidirectional,
                                  meter_credential_id=self.meter.credential_id)
        self.feed(sdk.calendar_published(
            self.station, rate_authority_id="auth-root", jurisdiction="US-CA",
            tariff_id=f"{name}-tariff", rules_version=f"{name}-rules", connectors=[connector],
            slot_duration_ms=HOUR_MS, horizon_start_ms=self.start_ms,
            horizon_end_ms=self.start_ms + 24 * HOUR_MS, posted_rate_per_kwh="0.30",
            currency=filed["currency"], grid_zone_id=ZONE, at_ms=T0_MS))
        assert self.state.calendar is not None
        self.currency = filed["currency"]
        self.seq = 0

    def feed(self, event: SignedEvent) -> Step:
        verdict = admit(event.encode(), event.body.subject_key.encode(), MARKET.name, self.store)
        assert isinstance(verdict, Admitted), verdict
        self.offset += 1
        return market_step(self.state, verdict, 0, self.offset, None, self.store)

    def begin(self, meter_start_wh: int = 5_000, meter_start_export_wh: int = 70_000) -> None:
        ident = sdk.identity(station_id=self.name, vehicle=self.vehicle,
                             rate_authority_id="auth-root", jurisdiction="US-CA",
                             connector_id="c1")
        terms = sdk.claim(energy_wh=20_000, start_ms=self.start_ms,
                          stop_ms=self.start_ms + 3 * HOUR_MS, ceiling_rate_per_kwh="0.50",
                          currency=self.currency, v2g_eligible=True)
        booked = self.feed(sdk.order(self.vehicle, "posted", order_id="o1", ident=ident,
                                     terms=terms, rate_per_kwh="0.30", at_ms=T0_MS + 1))
        started = self.feed(sdk.handshake(
            self.station, self.vehicle, session_id="s1", reservation_id="res:o1", ident=ident,
            started_at_ms=self.start_ms, meter_start_wh=meter_start_wh,
            meter_start_export_wh=meter_start_export_wh))
        assert booked.rejection is None and started.rejection is None, (booked, started)

    def read(self, minutes: int, import_wh: int, export_wh: int) -> Step:
        self.seq += 1
        return self.feed(sdk.meter_reading(
            self.meter, session_id="s1", station_id=self.name, connector_id="c1", seq=self.seq,
            import_wh=import_wh, export_wh=export_wh, at_ms=self.start_ms + minutes * MINUTE_MS))

    def close(self, minutes: int, import_wh: int, export_wh: int) -> tuple[Step, SignedEvent]:
        close = sdk.meter_closed_out(self.station, session_id="s1", connector_id="c1",
                                     closed_at_ms=self.start_ms + minutes * MINUTE_MS,
                                     final_import_wh=import_wh, final_export_wh=export_wh,
                                     last_reading_seq=self.seq or -1)
        return self.feed(close), close

    def countersign(self, close: SignedEvent, minutes: int) -> Step:
        return self.feed(sdk.close_out_countersigned(self.vehicle, close,
                                                     self.start_ms + minutes * MINUTE_MS))

    def co_sign(self, close: SignedEvent, price: str, minutes: int,
                operator: Participant | None = None) -> Step:
        return self.feed(sdk.settlement_co_signed(
            operator or self.operator, close, grid_zone_id=ZONE, clearing_price_per_kwh=price,
            at_ms=self.start_ms + minutes * MINUTE_MS))

    @property
    def session(self) -> dict[str, Any]:
        return self.state.extra["sessions"]["s1"]


def kinds(step: Step) -> list[str]:
    return [k for k, _ in pairs(step.decisions)]


def decision(step: Step, kind: str) -> dict[str, Any]:
    found = [p for k, p in pairs(step.decisions) if k == kind]
    assert len(found) == 1, (kinds(step), step.rejection)
    return found[0]


def reason(step: Step) -> str:
    assert step.rejection is not None, kinds(step)
    return step.rejection.reason


def amounts(settlement: dict[str, Any]) -> list[tuple[str, Decimal]]:
    return [(ln["kind"], ln["amount"]) for ln in settlement["lines"]]


# ---- E3 V2G -----------------------------------------------------------------------------------


def test_v2g_session_pays_export_at_the_operators_clearing_price_and_charges_import() -> None:
    depot = Depot("v2g-a")
    depot.begin()
    # 11 kW, one inverter: 4 kWh in, then 6 kWh out over the evening peak.
    for step in (depot.read(30, 9_000, 70_000), depot.read(60, 9_000, 75_500),
                 depot.read(90, 9_000, 76_000)):
        assert step.rejection is None, step.rejection
    closed, close = depot.close(100, 9_000, 76_000)
    assert closed.rejection is None and closed.decisions == []  # not priced yet: no settlement
    assert depot.countersign(close, 101).decisions == []
    later = depot.feed(sdk.heartbeat(depot.station, depot.start_ms + 30 * 24 * HOUR_MS))
    assert later.decisions == []  # pending stays pending: no silent finality, no silent loss
    assert depot.session["status"] == "CLOSED_OUT" and depot.session["settlement_id"] == ""

    priced = depot.co_sign(close, "0.125", 105)
    assert kinds(priced) == ["SettlementAdmitted", "SettlementFinalised"], priced.rejection
    settlement = decision(priced, "SettlementAdmitted")
    # import 4,000 Wh x 0.30 = 1.20; tax 10% = 0.12; export 6,000 Wh x 0.125 = 0.75 credit
    assert amounts(settlement) == [("ENERGY", Decimal("1.20")), ("TAX", Decimal("0.12")),
                                   ("V2G_EXPORT_CREDIT", Decimal("-0.75"))]
    credit = settlement["lines"][-1]
    assert (credit["quantity_wh"], credit["unit_rate_per_kwh"]) == (6_000, Decimal("0.125"))
    assert settlement["total_amount"] == Decimal("0.57") == sum(a for _, a in amounts(settlement))
    assert (settlement["energy_import_wh"], settlement["energy_export_wh"]) == (4_000, 6_000)
    assert depot.operator.credential_id in settlement["required_signer_ids"]
    assert set(decision(priced, "SettlementFinalised")["signer_ids"]) == {
        depot.station.credential_id, depot.vehicle.credential_id, depot.operator.credential_id}


def test_a_net_exporter_is_paid_and_the_credit_rounds_by_the_authoritys_rule() -> None:
    depot = Depot("v2g-yen", tariff={"currency": "JPY", "minor_units": 0,
                                     "rounding": "HALF_EVEN", "tax_percent": "0"})
    depot.begin(meter_start_export_wh=0)
    assert depot.read(60, 5_500, 10_000).rejection is None
    _, close = depot.close(61, 5_500, 10_001)
    # Co-signed first, countersigned after: the settlement is admitted at the co-signature.
    priced = depot.co_sign(close, "22.5", 70)
    settlement = decision(priced, "SettlementAdmitted")
    assert kinds(priced) == ["SettlementAdmitted"]
    # import 500 Wh x 0.30 = 0.15 -> 0 yen; export 10,001 Wh x 22.5 = 225.0225 -> 225 yen
    assert amounts(settlement) == [("ENERGY", Decimal(0)),
                                   ("V2G_EXPORT_CREDIT", Decimal(-225))]
    assert settlement["total_amount"] == Decimal(-225)  # a payout to the vehicle
    assert kinds(depot.countersign(close, 71)) == ["SettlementFinalised"]


def test_export_evidence_that_cannot_be_true_is_refused_with_its_reason() -> None:
    depot = Depot("v2g-bad")
    depot.begin(meter_start_export_wh=1_000)
    assert reason(depot.read(10, 5_000, 900)) == "METER_WENT_BACKWARDS"
    # 11 kW for 10 minutes moves at most ~1.9 kWh, in and out together.
    assert reason(depot.read(10, 6_000, 2_000)) == "IMPLAUSIBLE_READING"
    assert depot.read(10, 5_800, 1_900).rejection is None
    assert reason(depot.close(20, 5_800, 1_000)[0]) == "METER_WENT_BACKWARDS"
    assert depot.session["status"] == "ACTIVE"


def test_export_on_a_one_way_connector_or_without_a_grid_program_is_refused() -> None:
    one_way = Depot("v2g-oneway", bidirectional=False)
    one_way.begin()
    assert reason(one_way.read(10, 6_000, 70_500)) == "NOT_BIDIRECTIONAL"
    assert one_way.read(10, 6_000, 70_000).rejection is None  # import only: fine
    assert reason(one_way.close(20, 6_500, 70_001)[0]) == "NOT_BIDIRECTIONAL"

    bilateral = Depot("v2g-noprog", grid_program=False)
    bilateral.begin()
    assert reason(bilateral.read(10, 5_000, 70_800)) == "NO_GRID_PROGRAM"


def test_only_the_zones_operator_prices_the_export_and_only_at_a_sane_price() -> None:
    depot = Depot("v2g-cosign")
    depot.begin()
    assert depot.read(30, 6_000, 72_000).rejection is None
    _, close = depot.close(40, 6_000, 72_500)
    # a grid operator credential, but not one the zone's registration names
    stranger = depot.world.credential("v2g-cosign-op2", ["GRID_OPERATOR"],
                                      subject_id="v2g-cosign-op2")
    depot.store = depot.world.store()
    assert reason(depot.co_sign(close, "0.10", 41, operator=stranger)) == "NOT_THE_ZONES_OPERATOR"
    assert reason(depot.co_sign(close, "-0.05", 42)) == "INVALID_CLEARING_PRICE"
    assert reason(depot.co_sign(close, "1000", 43)) == "INVALID_CLEARING_PRICE"
    other_close = sdk.meter_closed_out(depot.station, session_id="s1", connector_id="c1",
                                       closed_at_ms=depot.start_ms + 40 * MINUTE_MS,
                                       final_import_wh=6_001, final_export_wh=72_500,
                                       last_reading_seq=1)
    assert reason(depot.co_sign(other_close, "0.10", 44)) == "CLOSE_OUT_MISMATCH"
    assert depot.session["settlement_id"] == ""  # refused co-signatures priced nothing
    priced = depot.co_sign(close, "0.10", 45)
    assert decision(priced, "SettlementAdmitted")["lines"][-1]["amount"] == Decimal("-0.25")
    assert reason(depot.co_sign(close, "0.20", 46)) == "ALREADY_SIGNED"  # priced once


def test_a_session_without_export_on_a_v2g_connector_settles_at_close_out_as_before() -> None:
    depot = Depot("v2g-none")
    depot.begin()
    assert depot.read(30, 7_000, 70_000).rejection is None
    closed, _ = depot.close(40, 7_000, 70_000)
    settlement = decision(closed, "SettlementAdmitted")
    assert settlement["energy_export_wh"] == 0 and settlement["kind"] == "CHARGE"
    assert [k for k, _ in amounts(settlement)] == ["ENERGY", "TAX"]


def test_a_handshake_written_before_the_export_register_existed_still_decodes() -> None:
    name = "chargemesh.session.v1.ConnectorHandshakeCompleted"
    root = resources.files("chargemesh.schemas").joinpath("avro")
    v0 = json.loads(root.joinpath("history", f"{name}.0.avsc").read_text())
    cat = SchemaCatalog()
    old = load_schema_json(v0)
    cat.add(old, current=False)
    cat.add(catalog().current(name), current=True)
    vehicle = Participant.seeded("hist-ev", secret="tests")
    record = {"session_id": "s", "reservation_id": "r", "started_at_ms": 5,
              "meter_start_wh": 1_200,
              "identity": sdk.identity(station_id="st", vehicle=vehicle, rate_authority_id="a",
                                       jurisdiction="US-CA", connector_id="c1")}
    import io

    import fastavro

    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, old.parsed, record)
    decoded_name, decoded = cat.decode(old.fingerprint, buffer.getvalue())
    assert decoded_name == name
    assert (decoded["meter_start_wh"], decoded["meter_start_export_wh"]) == (1_200, 0)
    assert old.fingerprint != catalog().current(name).fingerprint


# ---- E4 fleet depot ---------------------------------------------------------------------------

FLEET = {"fleet_id": "fleet-acme"}


def test_one_fleets_vehicle_at_its_own_depot_settles_as_an_internal_entry() -> None:
    depot = Depot("depot-a", grid_program=False, bidirectional=False,
                  tariff={"renewable_adder_per_kwh": "0.02"},
                  station_attributes={**FLEET, "site_id": "depot-north",
                                      "renewable_share_permille": "640"},
                  vehicle_attributes=FLEET)
    depot.begin()
    assert depot.read(60, 12_000, 70_000).rejection is None
    closed, close = depot.close(90, 15_000, 70_000)
    settlement = decision(closed, "SettlementAdmitted")
    assert settlement["kind"] == "INTERNAL_ACCOUNTING"
    # 10,000 Wh x 0.30 = 3.00; renewable adder 0.20; tax 10% = 0.32; eliminated: 0 due
    assert amounts(settlement) == [("ENERGY", Decimal("3.00")),
                                   ("RENEWABLE_CONTENT", Decimal("0.20")),
                                   ("TAX", Decimal("0.32")), ("ADJUSTMENT", Decimal("-3.52"))]
    assert settlement["total_amount"] == 0 == sum(a for _, a in amounts(settlement))
    assert settlement["evidence_event_ids"] == depot.session["evidence_event_ids"]  # lineage
    entry = decision(closed, "FleetAccountingRecorded")
    assert entry["settlement_id"] == settlement["settlement_id"]
    assert (entry["fleet_id"], entry["site_id"], entry["station_id"]) == (
        "fleet-acme", "depot-north", "depot-a")
    assert (entry["energy_import_wh"], entry["renewable_wh"]) == (10_000, 6_400)
    assert entry["internal_amount"] == Decimal("3.52")
    assert entry["delivered_until_ms"] == depot.start_ms + 90 * MINUTE_MS
    # Finality still needs both of the fleet's parties.
    assert kinds(depot.countersign(close, 91)) == ["SettlementFinalised"]


def test_a_vehicle_of_another_fleet_or_of_none_pays_as_usual() -> None:
    for vehicle_attributes in ({"fleet_id": "fleet-other"}, None):
        depot = Depot("depot-b", grid_program=False, bidirectional=False,
                      station_attributes=FLEET, vehicle_attributes=vehicle_attributes)
        depot.begin()
        closed, _ = depot.close(60, 10_000, 70_000)
        settlement = decision(closed, "SettlementAdmitted")
        assert settlement["kind"] == "CHARGE" and settlement["total_amount"] == Decimal("1.65")
        assert kinds(closed) == ["SettlementAdmitted"]


def test_a_malformed_renewable_share_is_not_trusted() -> None:
    depot = Depot("depot-c", grid_program=False, bidirectional=False,
                  station_attributes={**FLEET, "renewable_share_permille": "1200"},
                  vehicle_attributes=FLEET)
    depot.begin()
    closed, _ = depot.close(60, 10_000, 70_000)
    entry = decision(closed, "FleetAccountingRecorded")
    assert entry["site_id"] == "depot-c"  # no site attribute: the station is the site
    assert entry["renewable_wh"] == 0  # no renewable adder filed, no valid share declared


def test_a_fleets_v2g_session_keeps_the_export_credit_in_its_internal_entry() -> None:
    depot = Depot("depot-v2g", station_attributes=FLEET, vehicle_attributes=FLEET)
    depot.begin()
    assert depot.read(60, 10_000, 72_000).rejection is None
    _, close = depot.close(61, 10_000, 72_000)
    priced = depot.co_sign(close, "0.15", 62)
    settlement = decision(priced, "SettlementAdmitted")
    # import 5,000 Wh: 1.50 + 0.15 tax; export 2,000 Wh x 0.15 = 0.30 credit; net 1.35
    assert amounts(settlement) == [("ENERGY", Decimal("1.50")), ("TAX", Decimal("0.15")),
                                   ("V2G_EXPORT_CREDIT", Decimal("-0.30")),
                                   ("ADJUSTMENT", Decimal("-1.35"))]
    assert settlement["total_amount"] == 0
    entry = decision(priced, "FleetAccountingRecorded")
    assert (entry["energy_export_wh"], entry["internal_amount"]) == (2_000, Decimal("1.35"))
