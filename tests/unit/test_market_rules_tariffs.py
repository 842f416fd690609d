"""Issue 16, tariffs and claims (M3, C2), pure: the tariff in force at each moment and its
time-of-use bands split a session's lines; a filing's currency, minor units and rounding fit ISO
4217; a claim's adders are the filed tariff's; the V2G clearing-price cap is the tariff's."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from chargemesh.processors import currencies
from chargemesh.processors.embodiments import v2g
from chargemesh.processors.ingress import Admitted, Refused, admit_governance
from chargemesh.processors.ledger import claims
from chargemesh.processors.settlement import Reading, Tariff, schedule_between, segments, settle
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk import participant as sdk
from chargemesh.units import HOUR_MS, MINUTE_MS

from tests.support.world import T0_MS, make_world
from tests.unit.test_sessions import Station, settlement_of

DAY_MS = 24 * HOUR_MS
MIDNIGHT_MS = (T0_MS // DAY_MS + 1) * DAY_MS  # the first UTC midnight after T0


def verdict(store: Any, event: SignedEvent) -> str:
    out = admit_governance(event.encode(), event.body.subject_key.encode(), store)
    return "ADMITTED" if isinstance(out, Admitted) else str(
        out.rejection.reason if isinstance(out, Refused) else out)


# ---- ISO 4217 at filing -------------------------------------------------------------------------


def test_minor_units_come_from_iso_4217() -> None:
    assert (currencies.MINOR_UNITS["JPY"], currencies.MINOR_UNITS["USD"],
            currencies.MINOR_UNITS["KWD"], currencies.MINOR_UNITS["CLF"]) == (0, 2, 3, 4)
    assert "XAU" not in currencies.MINOR_UNITS and "usd" not in currencies.MINOR_UNITS


def test_a_filing_whose_currency_units_or_rounding_do_not_fit_is_refused() -> None:
    world = make_world()
    store = world.store()

    def filing(tid: str, currency: str, units: int, rounding: str = "HALF_UP") -> SignedEvent:
        return sdk.tariff_filed(world.root, tariff_id=tid, jurisdiction="US-CA",
                                currency=currency, ceiling_per_kwh="80", minor_units=units,
                                rounding=rounding, at_ms=T0_MS)

    assert verdict(store, filing("t-xyz", "XYZ", 2)) == "UNKNOWN_CURRENCY"
    assert verdict(store, filing("t-dollar", "$", 2)) == "UNKNOWN_CURRENCY"
    assert verdict(store, filing("t-jpy-2", "JPY", 2)) == "MINOR_UNITS_MISMATCH"
    assert verdict(store, filing("t-usd-0", "USD", 0)) == "MINOR_UNITS_MISMATCH"
    assert verdict(store, filing("t-usd-?", "USD", 2, "UNKNOWN")) == "UNKNOWN_ROUNDING"
    for tid in ("t-xyz", "t-jpy-2", "t-usd-0", "t-usd-?"):
        assert tid not in store.tariffs
    assert verdict(store, filing("t-jpy", "JPY", 0, "HALF_EVEN")) == "ADMITTED"
    assert verdict(store, filing("t-kwd", "KWD", 3)) == "ADMITTED"


# ---- versions: the tariff in force at each moment -------------------------------------------


def test_a_tariff_id_filed_again_is_a_later_version_never_a_retroactive_one() -> None:
    world = make_world()
    store = world.store()

    def version(from_ms: int, at_ms: int, **kw: Any) -> SignedEvent:
        fields: dict[str, Any] = {"currency": "USD", "ceiling_per_kwh": "0.80"}
        fields.update(kw)
        return sdk.tariff_filed(world.root, tariff_id="t", jurisdiction="US-CA",
                                effective_from_ms=from_ms, at_ms=at_ms, **fields)

    assert verdict(store, version(0, T0_MS)) == "ADMITTED"
    assert verdict(store, version(0, T0_MS + 1)) == "DUPLICATE_IDENTIFIER"
    assert verdict(store, version(T0_MS - 1, T0_MS)) == "INVALID_TARIFF_VERSION"  # retroactive
    assert verdict(store, version(MIDNIGHT_MS, T0_MS, currency="EUR")) == "INVALID_TARIFF_VERSION"
    assert verdict(store, version(MIDNIGHT_MS, T0_MS, tax_percent="5")) == "ADMITTED"
    assert [v["effective_from_ms"] for v in store.tariff_schedule("t")] == [0, MIDNIGHT_MS]
    assert store.tariffs["t"]["effective_from_ms"] == 0  # calendars still name the first


def test_a_session_over_midnight_bills_each_part_under_the_version_in_force() -> None:
    old = Tariff("t", "USD", 2, "HALF_UP", Decimal(10), Decimal("0.02"), Decimal(0))
    new = Tariff("t", "USD", 2, "HALF_UP", Decimal(5), Decimal("0.03"), Decimal(0),
                 time_of_use=((0, 6 * 60, Decimal("0.20")),), effective_from_ms=MIDNIGHT_MS)
    start = MIDNIGHT_MS - 30 * MINUTE_MS
    schedule = schedule_between([old, new], start, MIDNIGHT_MS + 30 * MINUTE_MS)
    assert schedule == [old, new]
    energy = segments(Reading(start, 0), [Reading(MIDNIGHT_MS, 10_000)],
                      Reading(MIDNIGHT_MS + 30 * MINUTE_MS, 20_000), Decimal("0.40"), [],
                      schedule)
    assert [(s.energy_wh, s.rate_per_kwh, s.version) for s in energy] == [
        (10_000, Decimal("0.40"), 0), (10_000, Decimal("0.20"), 1)]  # the night band after 0:00
    lines, total = settle(old, energy, schedule)
    assert [(ln["kind"], ln["amount"]) for ln in lines] == [
        ("ENERGY", Decimal("4.00")), ("CONGESTION_FEE", Decimal("0.20")),
        ("TAX", Decimal("0.42")),  # 10% of 4.20 under the old version
        ("ENERGY", Decimal("2.00")), ("CONGESTION_FEE", Decimal("0.30")),
        ("TAX", Decimal("0.12"))]  # 5% of 2.30 = 0.115 -> 0.12 under the new one
    assert total == Decimal("7.04") == sum(ln["amount"] for ln in lines)


def test_one_version_settles_exactly_as_before() -> None:
    only = Tariff("t", "USD", 2, "HALF_UP", Decimal("8.25"), Decimal(0), Decimal(0))
    energy = segments(Reading(0, 0), [Reading(600_000, 8_000)], Reading(1_200_000, 20_000),
                      Decimal("0.40"), [])
    assert settle(only, energy) == settle(only, segments(
        Reading(0, 0), [Reading(600_000, 8_000)], Reading(1_200_000, 20_000), Decimal("0.40"),
        [], [only]), [only])


def test_the_order_window_must_lie_where_a_version_is_in_force() -> None:
    filed = {"tariff_id": "t", "currency": "USD", "currency_minor_units": 2,
             "rounding": "HALF_UP", "tax_percent": Decimal(0), "congestion_fee_per_kwh":
             Decimal(0), "renewable_adder_per_kwh": Decimal(0), "effective_from_ms": 0,
             "effective_until_ms": MIDNIGHT_MS}
    assert claims.in_force_problem([filed], MIDNIGHT_MS - HOUR_MS, MIDNIGHT_MS) is None
    problem = claims.in_force_problem([filed], MIDNIGHT_MS - HOUR_MS, MIDNIGHT_MS + 1)
    assert problem is not None and problem.reason == "TARIFF_NOT_IN_FORCE"
    later = dict(filed, effective_from_ms=MIDNIGHT_MS, effective_until_ms=2**62)
    assert claims.in_force_problem([filed, later], MIDNIGHT_MS - HOUR_MS,
                                   MIDNIGHT_MS + HOUR_MS) is None


# ---- time-of-use bands for every session kind ------------------------------------------------


def _minute_of_day(at_ms: int) -> int:
    return (at_ms // MINUTE_MS) % (24 * 60)


def test_a_plain_session_splits_its_lines_by_the_tariffs_time_of_use_bands() -> None:
    world = make_world()
    start_ms = T0_MS + HOUR_MS  # PureStation's horizon start
    m0 = _minute_of_day(start_ms)
    # a cheap band over the readings of minutes 30 and 40 (T0 is 20 s past a minute)
    band = [(m0 + 21, m0 + 41, "0.25")]
    st = Station(world, "tou", sdk.connector("c1", 50_000),
                 {"currency": "USD", "ceiling_per_kwh": "0.80", "time_of_use": band},
                 slot_ms=HOUR_MS)
    assert st.start_ms == start_ms
    steps, _ = st.session(20_000, 1, [(10, 5_000), (20, 10_000), (30, 13_000), (40, 16_000)],
                          (50, 20_000))
    assert all(s.rejection is None for s in steps), [s.rejection for s in steps]
    lines = settlement_of(steps[-1])["lines"]
    assert [(ln["quantity_wh"], ln["unit_rate_per_kwh"], ln["amount"]) for ln in lines] == [
        (10_000, Decimal("0.30"), Decimal("3.00")),  # the booked rate before the band
        (6_000, Decimal("0.25"), Decimal("1.50")),  # readings at minutes 30 and 40: the band
        (4_000, Decimal("0.30"), Decimal("1.20"))]  # after it


# ---- the claim's adders ----------------------------------------------------------------------


FILED = {"tariff_id": "t", "tax_percent": Decimal("8.25"),
         "congestion_fee_per_kwh": Decimal("0.02"), "renewable_adder_per_kwh": Decimal(0)}


def adder(kind: str, rate: str = "0", percent: str = "0") -> dict[str, Any]:
    return {"kind": kind, "rate_per_kwh": Decimal(rate), "percent": Decimal(percent),
            "label": ""}


def test_claim_adders_must_be_the_filed_ones() -> None:
    assert claims.adders_problem(FILED, []) is None  # none declared: the filed ones apply
    assert claims.adders_problem(FILED, [adder("TAX", percent="8.25"),
                                         adder("CONGESTION_FEE", "0.02")]) is None
    for wrong in ([adder("TAX", percent="5")],  # lower tax
                  [adder("TAX", percent="8.25")],  # the congestion fee left out
                  [adder("TAX", percent="8.25"), adder("CONGESTION_FEE", "0.02"),
                   adder("RENEWABLE_CONTENT", "0.01")],  # an adder the tariff has not filed
                  [adder("TAX", percent="8.25"), adder("TAX", percent="8.25"),
                   adder("CONGESTION_FEE", "0.02")]):
        problem = claims.adders_problem(FILED, wrong)
        assert problem is not None and problem.reason == "ADDERS_MISMATCH", wrong


# ---- the V2G clearing-price cap is the tariff's, per currency --------------------------------


def _priced(tariff: dict[str, Any], price: str) -> str | None:
    s = {"tariff": tariff, "close_out": {"event_hash": "ab"}}
    problem = v2g.clearing_price_problem(s, {"settlement_id": "x", "close_out_event_hash":
                                             bytes.fromhex("ab"),
                                             "clearing_price_per_kwh": Decimal(price)}, "x")
    return None if problem is None else str(problem.reason)


def test_the_clearing_price_cap_is_declared_by_the_tariff_else_the_default() -> None:
    jpy = Tariff("t", "JPY", 0, "HALF_UP", Decimal(0), Decimal(0), Decimal(0),
                 clearing_price_cap_per_kwh=Decimal(5_000)).as_dict()
    usd = Tariff("t", "USD", 2, "HALF_UP", Decimal(0), Decimal(0), Decimal(0),
                 clearing_price_cap_per_kwh=Decimal(2)).as_dict()
    legacy = Tariff("t", "USD", 2, "HALF_UP", Decimal(0), Decimal(0), Decimal(0)).as_dict()
    assert _priced(jpy, "900") is None  # 900 JPY/kWh: above the old one-number cap of 100
    assert _priced(jpy, "5001") == "INVALID_CLEARING_PRICE"
    assert _priced(usd, "2.00") is None and _priced(usd, "2.01") == "INVALID_CLEARING_PRICE"
    assert _priced(legacy, "100") is None and _priced(legacy, "100.01") == "INVALID_CLEARING_PRICE"
