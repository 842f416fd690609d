"""Issue 16, tariffs and claims (C2), pure: the energy billed never exceeds the claimed energy
unless the claim allows an overrun (settlement.within_claim, at the ledger's close-out and in the
regulator's audit alike)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from chargemesh.processors.settlement import (
    Reading,
    Segment,
    Tariff,
    segments,
    settle,
    within_claim,
)
from chargemesh.streams.sdk import participant as sdk
from chargemesh.units import HOUR_MS, MINUTE_MS

from tests.support.world import T0_MS, make_world
from tests.unit.test_sessions import Station, settlement_of

USD = Tariff("t", "USD", 2, "HALF_UP", Decimal(10), Decimal("0.02"), Decimal(0))


def _energy() -> list[Segment]:
    energy: list[Segment] = segments(Reading(0, 0), [Reading(600_000, 8_000)],
                                     Reading(1_200_000, 20_000), Decimal("0.40"), [])
    return energy


def test_energy_beyond_the_claim_is_cut_at_the_claimed_wh() -> None:
    capped = within_claim(_energy(), 15_000)
    assert sum(s.energy_wh for s in capped) == 15_000
    lines, total = settle(USD, capped)
    energy = [ln for ln in lines if ln["kind"] == "ENERGY"]
    assert [ln["quantity_wh"] for ln in energy] == [15_000]
    assert "5000 Wh metered beyond the claim not billed" in energy[-1]["description"]
    assert [(ln["kind"], ln["quantity_wh"], ln["amount"]) for ln in lines] == [
        ("ENERGY", 15_000, Decimal("6.00")), ("CONGESTION_FEE", 15_000, Decimal("0.30")),
        ("TAX", 0, Decimal("0.63"))]
    assert total == Decimal("6.93")


def test_the_cut_falls_in_the_segment_that_crosses_the_claim() -> None:
    energy = segments(Reading(0, 0), [Reading(600_000, 8_000)], Reading(1_200_000, 20_000),
                      Decimal("0.40"), [], [USD, Tariff(
                          "t", "USD", 2, "HALF_UP", Decimal(10), Decimal("0.02"), Decimal(0),
                          time_of_use=((10, 20, Decimal("0.10")),))])
    assert [s.energy_wh for s in within_claim(energy, 6_000)] == [6_000]
    assert [s.energy_wh for s in within_claim(energy, 8_000)] == [8_000]
    assert [s.energy_wh for s in within_claim(energy, 9_000)] == [8_000, 1_000]


def test_a_claim_allowing_an_overrun_or_not_exceeded_bills_all() -> None:
    assert within_claim(_energy(), 15_000, overrun_allowed=True) == _energy()
    assert within_claim(_energy(), 20_000) == _energy()
    assert within_claim(_energy(), 0) == _energy()  # a booking written before claims were kept


def _session(overrun_allowed: bool) -> dict[str, Any]:
    world = make_world()
    st = Station(world, "cap", sdk.connector("c1", 22_000, kind="AC_L2"),
                 {"currency": "USD", "ceiling_per_kwh": "0.80"}, slot_ms=HOUR_MS)
    ident = sdk.identity(station_id="cap", vehicle=st.vehicle, rate_authority_id="auth-root",
                         jurisdiction="US-CA", connector_id="c1")
    terms = sdk.claim(energy_wh=2_000, start_ms=st.start_ms, stop_ms=st.start_ms + HOUR_MS,
                      ceiling_rate_per_kwh="0.50", currency="USD",
                      overrun_allowed=overrun_allowed)
    reserved = st.feed(sdk.order(st.vehicle, "posted", order_id="o1", ident=ident, terms=terms,
                                 rate_per_kwh="0.30", at_ms=T0_MS + 1))
    assert [d.payload["overrun_allowed"] for d in reserved.decisions] == [overrun_allowed]
    st.feed(sdk.handshake(st.station, st.vehicle, session_id="s1", reservation_id="res:o1",
                          ident=ident, started_at_ms=st.start_ms))
    st.feed(sdk.meter_reading(st.meter, session_id="s1", station_id="cap", connector_id="c1",
                              seq=1, import_wh=1_500, at_ms=st.start_ms + 10 * MINUTE_MS))
    return settlement_of(st.feed(sdk.meter_closed_out(
        st.station, session_id="s1", connector_id="c1",
        closed_at_ms=st.start_ms + 20 * MINUTE_MS, final_import_wh=3_000, last_reading_seq=1)))


def test_the_ledger_bills_at_most_the_claimed_energy() -> None:
    capped = _session(overrun_allowed=False)
    assert capped["energy_import_wh"] == 3_000  # metered
    assert [(ln["quantity_wh"], ln["amount"]) for ln in capped["lines"]] == [
        (2_000, Decimal("0.60"))]
    assert "1000 Wh metered beyond the claim not billed" in capped["lines"][0]["description"]
    allowed = _session(overrun_allowed=True)
    assert [(ln["quantity_wh"], ln["amount"]) for ln in allowed["lines"]] == [
        (3_000, Decimal("0.90"))]


def test_claims_written_before_the_field_still_decode() -> None:
    """Orders signed before ``overrun_allowed`` existed decode with it false (avro/history)."""
    import io
    import json
    from importlib import resources

    import fastavro
    from chargemesh.schemas.codec import catalog, load_schema_json
    from chargemesh.streams.envelope import open_payload

    world = make_world()
    vehicle = world.credential("old-ev", ["VEHICLE"], subject_id="old-ev")
    ident = sdk.identity(station_id="old", vehicle=vehicle, rate_authority_id="auth-root",
                         jurisdiction="US-CA", connector_id="c1")
    order = sdk.order(vehicle, "posted", order_id="o-old", ident=ident, terms=sdk.claim(
        energy_wh=2_000, start_ms=T0_MS, stop_ms=T0_MS + HOUR_MS, ceiling_rate_per_kwh="0.50",
        currency="USD"), rate_per_kwh="0.30", at_ms=T0_MS)
    record = open_payload(order)
    del record["claim"]["overrun_allowed"]
    root = resources.files("chargemesh.schemas").joinpath("avro", "history")
    old = json.loads(root.joinpath(f"{order.event_type}.0.avsc").read_text())
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(old), record)
    _, decoded = catalog().decode(load_schema_json(old).fingerprint, buffer.getvalue())
    assert decoded["claim"]["overrun_allowed"] is False
    for name in ("chargemesh.orders.v1.BidPlaced", "chargemesh.orders.v1.WalkUpRequested",
                 "chargemesh.orders.v1.PostedPriceAccepted", "chargemesh.ledger.v1.SlotReserved",
                 "chargemesh.commodity.v1.ChargingSessionDeclared",
                 "chargemesh.wireless.v1.TripAuthorised"):
        previous = load_schema_json(json.loads(root.joinpath(f"{name}.0.avsc").read_text()))
        assert catalog().by_fingerprint(previous.fingerprint) is not None
        assert previous.fingerprint != catalog().current(name).fingerprint


# ---- swaps and wireless trips bill under the version in force and its bands (M3) -------------

OLD = Tariff("t", "USD", 2, "HALF_UP", Decimal(10), Decimal(0), Decimal(0), swap_fee=Decimal(5))
NEW = Tariff("t", "USD", 2, "HALF_UP", Decimal(5), Decimal("0.03"), Decimal(0),
             swap_fee=Decimal(4), time_of_use=((0, 6 * 60, Decimal("0.20")),),
             effective_from_ms=T0_MS + 24 * HOUR_MS)


def test_a_swap_bills_under_the_version_in_force_and_its_band() -> None:
    from chargemesh.processors.embodiments import swap

    filings = filings_of(OLD, NEW)
    assert swap.tariff_in_force(filings, T0_MS) == OLD
    assert swap.tariff_in_force(filings, NEW.effective_from_ms) == NEW
    night = NEW.effective_from_ms - NEW.effective_from_ms % (24 * HOUR_MS) + 24 * HOUR_MS
    lines, total = swap.swap_settlement(NEW, Decimal("0.40"), 10_000, night + HOUR_MS)
    assert [(ln["kind"], ln["unit_rate_per_kwh"], ln["amount"]) for ln in lines] == [
        ("SWAP_FEE", Decimal(0), Decimal("4.00")), ("ENERGY", Decimal("0.20"), Decimal("2.00")),
        ("CONGESTION_FEE", Decimal("0.03"), Decimal("0.30")),
        ("TAX", Decimal(0), Decimal("0.32"))]  # 5% of 6.30 = 0.315
    assert total == Decimal("6.62")
    lines, _ = swap.swap_settlement(NEW, Decimal("0.40"), 10_000, night + 7 * HOUR_MS)
    assert lines[1]["unit_rate_per_kwh"] == Decimal("0.40")  # outside the band: the booked rate
    assert swap.swap_settlement(OLD, Decimal("0.40"), 10_000, T0_MS)[1] == Decimal("9.90")


def test_a_wireless_trip_bills_each_version_with_its_own_adders_and_tax() -> None:
    from chargemesh.processors.embodiments import wireless

    def agg(seg: str, rate: str, wh: int, version: Tariff) -> dict[str, Any]:
        return {"segment_id": seg, "tariff_id": "t", "rate": Decimal(rate), "energy_wh": wh,
                "meter_seconds": 30, "passes": 1, "from_ms": 0, "until_ms": 1,
                "tariff": version.as_dict()}

    trip = {"terms": {"tariff": OLD.as_dict()}, "energy_wh": 3_000,
            "lines": {"a@0.3": agg("a", "0.3", 1_000, OLD),
                      f"b@0.2@{NEW.effective_from_ms}": agg("b", "0.2", 2_000, NEW)}}
    lines, total = wireless.trip_lines(trip)
    assert [(ln["kind"], ln["amount"]) for ln in lines] == [
        ("ENERGY", Decimal("0.30")), ("TAX", Decimal("0.03")),  # 10% under the old version
        ("ENERGY", Decimal("0.40")), ("CONGESTION_FEE", Decimal("0.06")),
        ("TAX", Decimal("0.02"))]  # 5% of 0.46 = 0.023 under the new one
    assert total == Decimal("0.81")
    one = {"terms": {"tariff": OLD.as_dict()}, "energy_wh": 1_000,
           "lines": {"a@0.3": agg("a", "0.3", 1_000, OLD)}}
    assert wireless.trip_lines(one)[1] == Decimal("0.33")
    segment = {"tariff": filings_of(OLD)[0], "tariff_schedule": filings_of(OLD, NEW)}
    assert Decimal(wireless.in_force(segment, NEW.effective_from_ms)["tariff"]["tax_percent"]) == 5
    assert Decimal(wireless.in_force(segment, T0_MS)["tariff"]["tax_percent"]) == 10


def filings_of(*versions: Tariff) -> list[dict[str, Any]]:
    return [dict(v.as_dict(), currency_minor_units=v.minor_units,
                 energy_rate_ceiling_per_kwh=Decimal("0.80"),
                 time_of_use=[{"start_minute_of_day": a, "end_minute_of_day": b,
                               "rate_per_kwh": r} for a, b, r in v.time_of_use])
            for v in versions]
