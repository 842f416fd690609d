"""E2 battery swap and E5 mobile charger, pure: the same admission and ledger step the
processors run, fed event by event (no Kafka, no ClickHouse)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from chargemesh.processors.ledger import state as ledger

from chargemesh.processors.embodiments import swap
from chargemesh.processors.ingress import Admitted, Refused, admit
from chargemesh.processors.ledger.step import Step, market_step
from chargemesh.processors.settlement import Tariff
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.sdk import swap_mobile
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk.participant import Participant
from chargemesh.streams.topics import MARKET
from chargemesh.units import HOUR_MS, MINUTE_MS

from tests.support.world import T0_MS, World, make_world, pairs

SLOT_MS = 15 * MINUTE_MS
START_MS = T0_MS + HOUR_MS


class Ledger:
    """One station's ledger behind the real ingress check."""

    def __init__(self, world: World, station_id: str) -> None:
        self.world, self.state, self.offset = world, ledger.LedgerState(station_id), 0
        self.store = world.store()

    def refresh(self) -> None:
        self.store = self.world.store()

    def feed(self, event: SignedEvent) -> Step:
        verdict = admit(event.encode(), event.body.subject_key.encode(), MARKET.name, self.store)
        assert isinstance(verdict, Admitted), verdict
        self.offset += 1
        return market_step(self.state, verdict, 0, self.offset, None, self.store)

    def refused_at_ingress(self, event: SignedEvent) -> str:
        verdict = admit(event.encode(), event.body.subject_key.encode(), MARKET.name, self.store)
        assert isinstance(verdict, Refused), verdict
        return verdict.rejection.reason


def reason(step: Step) -> str:
    """The reason an order or command was refused (an order's refusal is also a decision)."""
    assert step.rejection is not None, step.decisions
    return step.rejection.reason


def decided(step: Step, kind: str) -> dict[str, Any]:
    found = [d for k, d in pairs(step.decisions) if k == kind]
    assert found, (step.decisions, step.rejection)
    return found[0]


# ---- E2 battery swap ---------------------------------------------------------------------------


class SwapStation:
    def __init__(self) -> None:
        self.world = world = make_world()
        self.station = world.credential("swap-st-cred", ["STATION"], subject_id="swap-st")
        world.governance += [
            sdk.tariff_filed(world.root, tariff_id="swap-tariff", jurisdiction="US-CA",
                             currency="USD", ceiling_per_kwh="0.80", swap_fee="5.00",
                             tax_percent="10", at_ms=T0_MS),
            sdk.rules_published(world.root, rules_version="swap-rules", jurisdiction="US-CA",
                                at_ms=T0_MS)]
        self.vehicles = {n: world.credential(f"swap-{n}-cred", ["VEHICLE"],
                                             subject_id=f"swap-{n}")
                         for n in ("v1", "v2", "v3", "v4")}
        self.ledger = Ledger(world, "swap-st")
        self.ledger.feed(sdk.calendar_published(
            self.station, rate_authority_id="auth-root", jurisdiction="US-CA",
            tariff_id="swap-tariff", rules_version="swap-rules",
            connectors=[sdk.connector("bay1", 1_000_000, kind="SWAP_BAY"),
                        sdk.connector("c1", 150_000)],
            slot_duration_ms=SLOT_MS, horizon_start_ms=START_MS,
            horizon_end_ms=START_MS + 24 * HOUR_MS, posted_rate_per_kwh="0.40",
            currency="USD", at_ms=T0_MS))

    def register(self, pack_id: str, chemistry: str, soh: int, charge_wh: int = 57_000,
                 at_ms: int = T0_MS + 10) -> Step:
        return self.ledger.feed(swap_mobile.pack_registered(
            self.station, pack_id=pack_id, chemistry=chemistry, state_of_health_permille=soh,
            capacity_wh=60_000, charge_wh=charge_wh, at_ms=at_ms))

    def ident(self, vehicle: str, connector_id: str = "bay1") -> dict[str, Any]:
        return sdk.identity(station_id="swap-st", vehicle=self.vehicles[vehicle],
                            rate_authority_id="auth-root", jurisdiction="US-CA",
                            connector_id=connector_id)

    def book(self, vehicle: str, order_id: str, slot: int, chemistry: str = "NMC",
             min_soh: int = 850, pack_id: str = "", returned: str = "",
             connector_id: str = "bay1", swap_claim: bool = True) -> Step:
        start = START_MS + slot * SLOT_MS
        ext = swap_mobile.swap_extension(chemistry=chemistry, min_state_of_health_permille=min_soh,
                                         pack_id=pack_id, returned_pack_id=returned)
        terms = sdk.claim(energy_wh=50_000, start_ms=start, stop_ms=start + SLOT_MS,
                          ceiling_rate_per_kwh="0.50", currency="USD",
                          extension=ext if swap_claim else None)
        return self.ledger.feed(sdk.order(self.vehicles[vehicle], "posted", order_id=order_id,
                                          ident=self.ident(vehicle, connector_id), terms=terms,
                                          rate_per_kwh="0.40", at_ms=T0_MS + 20))

    def swap_event(self, vehicle: str, order_id: str, slot: int, pack_out: str,
                   out_wh: int, pack_in: str, in_wh: int, session_id: str = "",
                   co_signed: bool = True) -> SignedEvent:
        event = swap_mobile.pack_swapped(
            self.station, self.vehicles[vehicle], session_id=session_id or f"swap-{order_id}",
            reservation_id=f"res:{order_id}", ident=self.ident(vehicle), pack_out_id=pack_out,
            pack_out_charge_wh=out_wh, pack_in_id=pack_in, pack_in_charge_wh=in_wh,
            pack_in_chemistry="NMC", pack_in_state_of_health_permille=870,
            swapped_at_ms=START_MS + slot * SLOT_MS + 60_000)
        if not co_signed:
            event = self.station.sign(event.event_type, swap_mobile_payload(event),
                                      subject_key="swap-st", occurred_at_ms=START_MS)
        return event


def swap_mobile_payload(event: SignedEvent) -> dict[str, Any]:
    from chargemesh.streams.envelope import open_payload

    return open_payload(event)


def test_the_extension_is_told_apart_from_the_other_embodiments() -> None:
    terms = sdk.claim(energy_wh=1, start_ms=0, stop_ms=1, ceiling_rate_per_kwh="1",
                      currency="USD", extension=swap_mobile.swap_extension(
                          chemistry="lfp", min_state_of_health_permille=800))
    assert swap.swap_claim(terms) == {"pack_id": "", "chemistry": "lfp",
                                      "state_of_health_permille": 800, "returned_pack_id": ""}
    assert swap.swap_claim(dict(terms, extension={"fleet_id": "f", "site_id": ""})) is None
    assert swap.swap_claim(dict(terms, extension=None)) is None


def test_swap_settlement_is_fee_plus_energy_difference_plus_tax_in_decimal_lines() -> None:
    tariff = Tariff("t", "EUR", 2, "HALF_EVEN", Decimal(19), Decimal("0.01"), Decimal(0),
                    swap_fee=Decimal("4.995"))
    lines, total = swap.swap_settlement(tariff, Decimal("0.55"), 42_123, 7)
    assert [ln["kind"] for ln in lines] == ["SWAP_FEE", "ENERGY", "CONGESTION_FEE", "TAX"]
    amounts = [ln["amount"] for ln in lines]
    assert amounts[:3] == [Decimal("5.00"), Decimal("23.17"), Decimal("0.42")]
    assert amounts[3] == (Decimal("28.59") * Decimal("0.19")).quantize(Decimal("0.01"))
    assert sum(amounts) == total and all(isinstance(a, Decimal) for a in amounts)
    only_fee, fee_total = swap.swap_settlement(tariff, Decimal("0.55"), 0, 7)
    assert [ln["kind"] for ln in only_fee] == ["SWAP_FEE", "TAX"]
    assert fee_total == Decimal("5.00") + Decimal("0.95")


def test_a_pack_goes_out_comes_back_and_goes_out_again_each_swap_settled_and_final() -> None:
    st = SwapStation()
    assert st.register("P1", "nmc", 950).rejection is None  # chemistry codes are normalised
    assert st.register("P2", "NMC", 800, charge_wh=55_000).rejection is None
    assert st.register("P3", "LFP", 990).rejection is None

    # V1 asks for any NMC pack >= 850: it gets the best one, P1, held for its booking.
    assert decided(st.book("v1", "o1", slot=0), "SlotReserved")["connector_id"] == "bay1"
    assert swap.holds(st.ledger.state)["res:o1"]["pack_id"] == "P1"
    assert reason(st.book("v2", "o2", slot=1, pack_id="P1")) == "PACK_NOT_AVAILABLE"
    assert reason(st.book("v3", "o3", slot=1, chemistry="LFP", pack_id="P2")) == (
        "PACK_CHEMISTRY_INCOMPATIBLE")
    refused = st.book("v4", "o4", slot=1, min_soh=850, pack_id="P2")
    assert reason(refused) == "PACK_BELOW_MIN_SOH"
    assert decided(refused, "OrderRejected")["reason_code"] == "PACK_BELOW_MIN_SOH"
    assert reason(st.book("v4", "o5", slot=1, min_soh=995)) == "NO_COMPATIBLE_PACK"

    first = st.ledger.feed(st.swap_event("v1", "o1", 0, "P1", 57_000, "PA", 6_000))
    admitted = decided(first, "SettlementAdmitted")
    assert [(ln["kind"], ln["amount"]) for ln in admitted["lines"]] == [
        ("SWAP_FEE", Decimal("5.00")), ("ENERGY", Decimal("20.40")), ("TAX", Decimal("2.54"))]
    assert admitted["total_amount"] == Decimal("27.94") == sum(
        ln["amount"] for ln in admitted["lines"])
    assert admitted["energy_import_wh"] == 51_000 and admitted["currency"] == "USD"
    assert decided(first, "SettlementFinalised")["signer_ids"] == [
        st.station.credential_id, st.vehicles["v1"].credential_id]
    packs = swap.packs(st.ledger.state)
    assert (packs["P1"]["status"], packs["P1"]["vehicle_credential_id"]) == (
        "ON_VEHICLE", st.vehicles["v1"].credential_id)
    assert packs["PA"]["status"] == "RETURNED"
    assert reason(st.register("P1", "NMC", 950)) == "PACK_ON_VEHICLE"

    # V2 cannot hand back the pack V1 drove off with; V1 brings P1 back and takes P2.
    assert reason(st.book("v2", "o6", slot=2, min_soh=800, returned="P1")) == (
        "PACK_NOT_HELD_BY_VEHICLE")
    assert st.book("v1", "o7", slot=2, min_soh=800, returned="P1").rejection is None
    second = st.ledger.feed(st.swap_event("v1", "o7", 2, "P2", 55_000, "P1", 4_000))
    assert decided(second, "SettlementAdmitted")["energy_import_wh"] == 51_000
    assert packs["P1"]["status"] == "RETURNED"
    assert reason(st.book("v2", "o8", slot=4, pack_id="P1")) == "PACK_NOT_AVAILABLE"
    assert st.register("P1", "NMC", 940, charge_wh=58_000, at_ms=T0_MS + 30).rejection is None
    assert st.book("v2", "o9", slot=4, pack_id="P1").rejection is None
    third = st.ledger.feed(st.swap_event("v2", "o9", 4, "P1", 58_000, "PB", 3_000))
    assert decided(third, "SettlementAdmitted")["total_amount"] == Decimal("29.70")
    assert packs["P1"]["cycles"] == 2
    assert packs["P1"]["vehicle_credential_id"] == st.vehicles["v2"].credential_id


def test_swaps_that_do_not_match_their_booking_are_refused_with_a_reason() -> None:
    st = SwapStation()
    st.register("P1", "NMC", 950)
    st.register("P2", "NMC", 900)
    assert reason(st.book("v1", "plain", slot=0, swap_claim=False)) == "SWAP_BAY_MISMATCH"
    assert reason(st.book("v1", "onc1", slot=0, connector_id="c1")) == "SWAP_BAY_MISMATCH"
    assert reason(st.book("v1", "anyc", slot=0, connector_id="")) == "CONNECTOR_REQUIRED"
    assert st.book("v1", "o1", slot=0, pack_id="P1", returned="PX").rejection is None
    assert reason(st.ledger.feed(st.swap_event("v1", "o1", 0, "P2", 50_000, "PX", 0))) == (
        "WRONG_PACK")
    assert reason(st.ledger.feed(st.swap_event("v1", "o1", 0, "P1", 50_000, "PY", 0))) == (
        "RETURNED_PACK_MISMATCH")
    assert reason(st.ledger.feed(st.swap_event("v1", "o1", 0, "P1", 90_000, "PX", 0))) == (
        "IMPLAUSIBLE_CHARGE")
    assert reason(st.ledger.feed(st.swap_event("v2", "o1", 0, "P1", 50_000, "PX", 0))) == (
        "NOT_YOUR_RESERVATION")
    # The vehicle must co-sign the swap: a station alone cannot claim one.
    assert st.ledger.refused_at_ingress(st.swap_event("v1", "o1", 0, "P1", 50_000, "PX", 0,
                                                      co_signed=False)) == "MISSING_SIGNATURE"
    # The station re-tested P1 below the vehicle's minimum after the booking: refused at swap.
    st.register("P1", "NMC", 700)
    assert reason(st.ledger.feed(st.swap_event("v1", "o1", 0, "P1", 50_000, "PX", 0))) == (
        "PACK_BELOW_MIN_SOH")
    st.register("P1", "NMC", 950)
    ok = st.ledger.feed(st.swap_event("v1", "o1", 0, "P1", 50_000, "PX", 0))
    assert decided(ok, "SettlementFinalised")["session_id"] == "swap-o1"
    replayed = st.ledger.feed(st.swap_event("v1", "o1", 0, "P1", 50_000, "PX", 0))
    assert reason(replayed) == "UNKNOWN_RESERVATION" and not replayed.decisions
    assert reason(st.register("", "NMC", 950)) == "INVALID_PACK"
    assert reason(st.register("P9", "NMC", 1_001)) == "INVALID_PACK"


def test_the_ledger_state_with_packs_survives_its_serialisation() -> None:
    st = SwapStation()
    st.register("P1", "NMC", 950)
    st.book("v1", "o1", slot=0)
    restored = ledger.load_state(ledger.dump_state(st.ledger.state))
    assert swap.packs(restored) == swap.packs(st.ledger.state)
    assert swap.holds(restored)["res:o1"]["pack_id"] == "P1"


# ---- E5 mobile charger -------------------------------------------------------------------------


EU_TARIFF = {"tax_percent": "19", "rounding": "HALF_EVEN", "minor_units": 2}
US_TARIFF = {"tax_percent": "8.25", "rounding": "HALF_UP", "minor_units": 2}


def eu_authority(world: World, name: str = "auth-eu-mobile") -> Participant:
    eu = Participant.seeded(name, secret="tests")
    world.governance += [
        world.root.recognise_authority(eu, "DE-BY", ["AUTHORITY", "RATE_AUTHORITY"],
                                       at_ms=T0_MS),  # recognised first: then it may declare
        eu.declare_authority("EU rate authority", "DE-BY", ["AUTHORITY", "RATE_AUTHORITY"],
                             "EUR", at_ms=T0_MS),
        sdk.reciprocity_agreed(world.root, eu, agreement_id=f"{name}-recip", at_ms=T0_MS)]
    return eu


class Truck:
    def __init__(self) -> None:
        self.world = world = make_world()
        self.eu = eu_authority(world)
        self.truck = world.credential("truck-cred", ["MOBILE_STATION"], subject_id="truck-1",
                                      attributes={"operating_jurisdictions": "US-CA,DE-BY"})
        self.fixed = world.credential("fixed-cred", ["STATION"], subject_id="truck-1")
        self.meter = world.credential("truck-meter", ["METER"], subject_id="truck-meter")
        self.vehicles = [world.credential(f"mob-v{i}", ["VEHICLE"], subject_id=f"mob-v{i}")
                         for i in range(3)]
        world.governance += [
            sdk.tariff_filed(world.root, tariff_id="ca-tariff", jurisdiction="US-CA",
                             currency="USD", ceiling_per_kwh="0.80", at_ms=T0_MS, **US_TARIFF),
            sdk.tariff_filed(self.eu, tariff_id="by-tariff", jurisdiction="DE-BY",
                             currency="EUR", ceiling_per_kwh="0.90", at_ms=T0_MS, **EU_TARIFF),
            sdk.rules_published(world.root, rules_version="mob-rules", jurisdiction="US-CA",
                                at_ms=T0_MS)]
        self.ledger = Ledger(world, "truck-1")
        self.ledger.feed(sdk.calendar_published(
            self.truck, rate_authority_id="auth-root", jurisdiction="US-CA",
            tariff_id="ca-tariff", rules_version="mob-rules",
            connectors=[sdk.connector("m1", 50_000, kind="MOBILE",
                                      meter_credential_id="truck-meter")],
            slot_duration_ms=HOUR_MS, horizon_start_ms=START_MS,
            horizon_end_ms=START_MS + 24 * HOUR_MS, posted_rate_per_kwh="0.45",
            currency="USD", at_ms=T0_MS))

    def move(self, jurisdiction: str, authority: str, tariff: str, posted: str, at_ms: int,
             by: Participant | None = None, dispatch_id: str = "d1") -> SignedEvent:
        return swap_mobile.mobile_relocated(
            by or self.truck, jurisdiction=jurisdiction, rate_authority_id=authority,
            tariff_id=tariff, posted_rate_per_kwh=posted, latitude_microdeg=48_137_000,
            longitude_microdeg=11_575_000, at_ms=at_ms, dispatch_id=dispatch_id)

    def deliver(self, i: int, hour: int, authority: str, jurisdiction: str, currency: str,
                posted: str, wh: int, dispatch_id: str = "d1",
                book_only: bool = False) -> tuple[Step, Step]:
        """Book, hand-shake, meter and close out one session; the booking and close-out steps."""
        vehicle, start = self.vehicles[i], START_MS + hour * HOUR_MS
        ident = sdk.identity(station_id="truck-1", vehicle=vehicle, rate_authority_id=authority,
                             jurisdiction=jurisdiction, connector_id="m1")
        terms = sdk.claim(energy_wh=wh, start_ms=start, stop_ms=start + HOUR_MS,
                          ceiling_rate_per_kwh="0.90", currency=currency,
                          extension=swap_mobile.mobile_extension(
                              dispatch_id=dispatch_id, latitude_microdeg=1,
                              longitude_microdeg=2))
        booked = self.ledger.feed(sdk.order(vehicle, "posted", order_id=f"mo{i}", ident=ident,
                                            terms=terms, rate_per_kwh=posted,
                                            at_ms=T0_MS + 100 + i))
        if booked.rejection is not None or book_only:
            return booked, booked
        sid = f"mob-s{i}"
        self.ledger.feed(sdk.handshake(self.truck, vehicle, session_id=sid,
                                       reservation_id=f"res:mo{i}", ident=ident,
                                       started_at_ms=start))
        self.ledger.feed(sdk.meter_reading(self.meter, session_id=sid, station_id="truck-1",
                                           connector_id="m1", seq=1, import_wh=wh // 2,
                                           at_ms=start + 30 * 60_000))
        closed = self.ledger.feed(sdk.meter_closed_out(
            self.truck, session_id=sid, connector_id="m1", closed_at_ms=start + 50 * 60_000,
            final_import_wh=wh, last_reading_seq=1))
        return booked, closed


def test_each_session_settles_under_the_tariff_of_the_place_the_truck_delivers() -> None:
    tr = Truck()
    assert tr.ledger.feed(tr.move("US-CA", "auth-root", "ca-tariff", "0.45",
                                  T0_MS + 50)).rejection is None
    _, closed_a = tr.deliver(0, 1, "auth-root", "US-CA", "USD", "0.45", 20_000)
    a = decided(closed_a, "SettlementAdmitted")
    assert (a["currency"], a["tariff_id"]) == ("USD", "ca-tariff")
    assert [(ln["kind"], ln["amount"]) for ln in a["lines"]] == [
        ("ENERGY", Decimal("9.00")), ("TAX", Decimal("0.74"))]

    # Booked in California, not yet started: released when the truck leaves.
    booked = tr.deliver(2, 5, "auth-root", "US-CA", "USD", "0.45", 10_000, book_only=True)[0]
    assert decided(booked, "SlotReserved")
    moved = tr.ledger.feed(tr.move("DE-BY", tr.eu.credential_id, "by-tariff", "0.60",
                                   T0_MS + 60, dispatch_id="d2"))
    assert moved.rejection is None
    assert decided(moved, "SlotReleased")["reason_code"] == "STATION_RELOCATED"
    assert tr.ledger.state.calendar["currency"] == "EUR"  # type: ignore[index]
    # A claim naming the old dispatch, or the old place's authority, is refused.
    assert reason(tr.deliver(1, 3, tr.eu.credential_id, "DE-BY", "EUR", "0.60", 1_000)[0]) == (
        "WRONG_DISPATCH")
    assert reason(tr.deliver(1, 3, "auth-root", "US-CA", "USD", "0.45", 1_000,
                             dispatch_id="d2")[0]) == "RATE_AUTHORITY_MISMATCH"
    _, closed_b = tr.deliver(1, 3, tr.eu.credential_id, "DE-BY", "EUR", "0.60", 20_005,
                             dispatch_id="d2")
    b = decided(closed_b, "SettlementAdmitted")
    assert (b["currency"], b["tariff_id"], b["rounding"]) == ("EUR", "by-tariff", "HALF_EVEN")
    assert b["identity"]["rate_authority_id"] == tr.eu.credential_id
    energy = (Decimal(20_005) * Decimal("0.60") / 1000).quantize(Decimal("0.01"))
    assert [ln["amount"] for ln in b["lines"]] == [
        energy, (energy * Decimal("0.19")).quantize(Decimal("0.01"))]
    assert sum(ln["amount"] for ln in b["lines"]) == b["total_amount"]


def test_location_updates_that_do_not_hold_are_rejected_with_a_reason() -> None:
    tr = Truck()
    assert tr.ledger.refused_at_ingress(tr.move("US-CA", "auth-root", "ca-tariff", "0.45",
                                                T0_MS + 5, by=tr.fixed)) == "ROLE_NOT_PERMITTED"
    cases = [
        (tr.move("DE-BY", tr.eu.credential_id, "ca-tariff", "0.45", T0_MS + 10),
         "NO_TARIFF_IN_JURISDICTION"),
        (tr.move("GB-LDN", "auth-root", "ca-tariff", "0.45", T0_MS + 11),  # root: US-CA, DE-BY
         "NOT_THE_JURISDICTIONS_AUTHORITY"),
        (tr.move("DE-BY", "nobody", "by-tariff", "0.45", T0_MS + 12),
         "UNRECOGNISED_RATE_AUTHORITY"),
        (tr.move("DE-BY", tr.eu.credential_id, "by-tariff", "0.95", T0_MS + 13),
         "ABOVE_FILED_CEILING"),
    ]
    for event, expected in cases:
        step = tr.ledger.feed(event)
        assert reason(step) == expected, event
        assert tr.ledger.state.calendar["tariff_id"] == "ca-tariff"  # type: ignore[index]
    assert tr.ledger.feed(tr.move("DE-BY", tr.eu.credential_id, "by-tariff", "0.50",
                                  T0_MS + 20)).rejection is None
    assert reason(tr.ledger.feed(tr.move("US-CA", "auth-root", "ca-tariff", "0.45",
                                         T0_MS + 15))) == "STALE_LOCATION"


def test_a_truck_does_not_move_mid_session_nor_outside_its_credential() -> None:
    tr = Truck()
    restricted = tr.world.credential("truck2-cred", ["MOBILE_STATION"], subject_id="truck-2",
                                     attributes={"operating_jurisdictions": "US-CA"})
    tr.ledger.refresh()
    other = Ledger(tr.world, "truck-2")
    other.feed(sdk.calendar_published(
        restricted, rate_authority_id="auth-root", jurisdiction="US-CA", tariff_id="ca-tariff",
        rules_version="mob-rules", connectors=[sdk.connector("m1", 50_000, kind="MOBILE")],
        slot_duration_ms=HOUR_MS, horizon_start_ms=START_MS,
        horizon_end_ms=START_MS + 24 * HOUR_MS, posted_rate_per_kwh="0.45", currency="USD",
        at_ms=T0_MS))
    assert reason(other.feed(tr.move("DE-BY", tr.eu.credential_id, "by-tariff", "0.50",
                                     T0_MS + 20, by=restricted))) == "JURISDICTION_NOT_PERMITTED"

    tr.ledger.feed(tr.move("US-CA", "auth-root", "ca-tariff", "0.45", T0_MS + 30))
    vehicle, start = tr.vehicles[0], START_MS + HOUR_MS
    ident = sdk.identity(station_id="truck-1", vehicle=vehicle, rate_authority_id="auth-root",
                         jurisdiction="US-CA", connector_id="m1")
    terms = sdk.claim(energy_wh=5_000, start_ms=start, stop_ms=start + HOUR_MS,
                      ceiling_rate_per_kwh="0.90", currency="USD")
    tr.ledger.feed(sdk.order(vehicle, "posted", order_id="mid", ident=ident, terms=terms,
                             rate_per_kwh="0.45", at_ms=T0_MS + 40))
    tr.ledger.feed(sdk.handshake(tr.truck, vehicle, session_id="mid-s", reservation_id="res:mid",
                                 ident=ident, started_at_ms=start))
    assert reason(tr.ledger.feed(tr.move("DE-BY", tr.eu.credential_id, "by-tariff", "0.50",
                                         start + 60_000))) == "SESSION_IN_PROGRESS"
