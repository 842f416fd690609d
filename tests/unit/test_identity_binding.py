"""Issue 15, hole 4 (pure): jurisdiction and identity are bound to the station's credential.

A station credentialed for US-CA cannot publish a calendar, nor record a session, that says
another jurisdiction; a session names the hardware its station registered for the connector;
the vehicle id kind is the one its credential holds (``vin`` attribute: VIN, else PSEUDONYM).
Every story feeds signed events through ``commands.handle``, as the market agent does.
"""

from __future__ import annotations

from typing import Any

from chargemesh.processors.ledger import binding
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk.participant import (
    Participant,
    claim,
    connector,
    handshake,
    identity,
    order,
    tariff_filed,
)

from tests.unit.test_ledger import (
    POSTED,
    POWER_W,
    RATE_AUTHORITY,
    STATION_ID,
    TARIFF,
    Market,
    market,
    reason,
    reserved,
    slot,
)

VIN = "WVWZZZ1JZXW000001"


def ident(m: Market, vehicle: Participant, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"station_id": STATION_ID, "vehicle": vehicle,
                              "rate_authority_id": RATE_AUTHORITY, "jurisdiction": "US-CA",
                              "connector_id": "c1"}
    fields.update(overrides)
    return identity(**fields)


def book(m: Market, vehicle: Participant, order_id: str, **overrides: Any) -> SignedEvent:
    window = slot(1)
    return order(vehicle, "posted", order_id=order_id, ident=ident(m, vehicle, **overrides),
                 terms=claim(energy_wh=10_000, start_ms=window[0], stop_ms=window[1],
                             ceiling_rate_per_kwh="0.80", currency="USD"),
                 rate_per_kwh=POSTED, at_ms=m.now())


def shake(m: Market, vehicle: Participant, order_id: str, station: Participant | None = None,
          **overrides: Any) -> SignedEvent:
    return handshake(station or m.station, vehicle, session_id=f"s-{order_id}",
                     reservation_id=f"res:{order_id}", ident=ident(m, vehicle, **overrides),
                     started_at_ms=slot(1)[0])


def test_the_sdk_defaults_name_the_hardware_the_calendar_registers() -> None:
    m = market()
    v1 = m.vehicles["v1"]
    assert ident(m, v1)["connector_hardware_id"] == connector("c1", POWER_W)["hardware_id"]
    assert identity(station_id=STATION_ID, vehicle=v1, rate_authority_id=RATE_AUTHORITY,
                    jurisdiction="US-CA")["connector_hardware_id"] == ""
    reserved(m.feed(book(m, v1, "o1")))
    assert m.feed(shake(m, v1, "o1")).rejection is None


def test_a_calendar_outside_the_station_credentials_jurisdiction_is_refused() -> None:
    m = market(publish=False)
    m.world.governance.append(tariff_filed(m.world.root, tariff_id="t-nowhere",
                                           jurisdiction="ZZ-NOWHERE", currency="USD",
                                           ceiling_per_kwh="0.80"))
    m.store = m.world.store()
    refused = m.publish(jurisdiction="ZZ-NOWHERE", tariff_id="t-nowhere")
    assert reason(refused) == "JURISDICTION_MISMATCH"
    assert m.state.calendar is None
    assert m.publish().rejection is None  # the legitimate twin


def test_a_calendar_whose_tariff_is_filed_for_another_jurisdiction_is_refused() -> None:
    m = market(publish=False)
    m.world.governance.append(tariff_filed(m.world.root, tariff_id="t-de", jurisdiction="DE-BY",
                                           currency="USD", ceiling_per_kwh="0.80"))
    m.store = m.world.store()
    # a US-CA station publishing a US-CA calendar under a tariff filed for DE-BY
    assert reason(m.publish(tariff_id="t-de")) == "JURISDICTION_MISMATCH"
    assert m.state.calendar is None
    assert m.publish(tariff_id=TARIFF).rejection is None


def test_a_calendar_under_an_authority_of_another_jurisdiction_is_refused() -> None:
    m = market(publish=False)
    de_authority = Participant.seeded("auth-de", secret="tests")
    m.world.governance.append(m.world.root.recognise_authority(
        de_authority, "DE-BY", ["AUTHORITY", "RATE_AUTHORITY"]))
    m.store = m.world.store()
    # however a tariff of a DE-BY authority came to name US-CA, it does not bind a US-CA calendar
    m.store.tariffs["t-ca-by-de"] = dict(m.store.tariffs[TARIFF], tariff_id="t-ca-by-de",
                                         rate_authority_id="auth-de")
    payload = {"jurisdiction": "US-CA", "tariff_id": "t-ca-by-de",
               "rate_authority_id": "auth-de", "connectors": [connector("c1", POWER_W)]}
    problem = binding.calendar_problem(m.store, m.station.credential_id, payload)
    assert problem is not None and problem.reason == "JURISDICTION_MISMATCH"
    assert "auth-de governs DE-BY" in problem.detail
    legit = dict(payload, tariff_id=TARIFF, rate_authority_id=RATE_AUTHORITY)
    assert binding.calendar_problem(m.store, m.station.credential_id, legit) is None


def test_connector_hardware_is_registered_once_per_calendar() -> None:
    m = market(publish=False)
    twins = [connector("c1", POWER_W, hardware_id="EVSE-1"),
             connector("c2", POWER_W, hardware_id="EVSE-1")]
    assert reason(m.publish(twins)) == "INVALID_CALENDAR"
    assert reason(m.publish([connector("c1", POWER_W, hardware_id=" " * 200)])) == (
        "INVALID_CALENDAR")
    assert m.publish([connector("c1", POWER_W, hardware_id="EVSE-1"),
                      connector("c2", POWER_W, hardware_id="EVSE-2")]).rejection is None
    assert m.state.connector("c2")["hardware_id"] == "EVSE-2"  # type: ignore[index]


def test_an_order_must_name_the_calendars_jurisdiction_and_the_connectors_hardware() -> None:
    m = market()
    v1 = m.vehicles["v1"]
    assert reason(m.feed(book(m, v1, "o1", jurisdiction="ZZ-NOWHERE"))) == (
        "JURISDICTION_MISMATCH")
    assert reason(m.feed(book(m, v1, "o2", connector_hardware_id="hw-of-another"))) == (
        "UNKNOWN_CONNECTOR_HARDWARE")
    assert reason(m.feed(book(m, v1, "o3", connector_id="",
                              connector_hardware_id="hw-c1"))) == "UNKNOWN_CONNECTOR_HARDWARE"
    assert m.live() == []
    reserved(m.feed(book(m, v1, "o4")))


def test_a_session_identity_outside_the_stations_binding_is_refused() -> None:
    """The issue's attack: a US-CA station records a session in ZZ-NOWHERE on foreign hardware."""
    m = market()
    v1 = m.vehicles["v1"]
    reserved(m.feed(book(m, v1, "o1")))
    attacks = {
        "JURISDICTION_MISMATCH": {"jurisdiction": "ZZ-NOWHERE"},
        "UNKNOWN_CONNECTOR_HARDWARE": {"connector_hardware_id": "hw-not-mine"},
        "VEHICLE_ID_KIND_MISMATCH": {"vehicle_id_kind": "VIN"},
        "RATE_AUTHORITY_MISMATCH": {"rate_authority_id": "auth-nobody"},
    }
    for code, overrides in attacks.items():
        outcome = m.feed(shake(m, v1, "o1", **overrides))
        assert reason(outcome) == code, overrides
        assert outcome.decisions == []
    assert m.state.extra.get("sessions", {}) == {}
    assert m.feed(shake(m, v1, "o1")).rejection is None  # the legitimate twin
    session = m.state.extra["sessions"]["s-o1"]
    assert session["identity"]["jurisdiction"] == "US-CA"
    assert session["identity"]["connector_hardware_id"] == "hw-c1"


def test_a_handshake_by_another_credential_of_the_same_station_is_refused() -> None:
    m = market()
    v1 = m.vehicles["v1"]
    other = m.world.credential("st-1-other", ["STATION"], subject_id=STATION_ID)
    m.store = m.world.store()
    reserved(m.feed(book(m, v1, "o1")))
    assert reason(m.feed(shake(m, v1, "o1", station=other))) == "NOT_THE_STATIONS_CREDENTIAL"
    assert m.feed(shake(m, v1, "o1")).rejection is None


def test_the_vehicle_id_kind_follows_the_vehicle_credential() -> None:
    m = market()
    vin_car = m.world.credential("cred-vin", ["VEHICLE"], subject_id=VIN,
                                 attributes={binding.VIN_ATTRIBUTE: VIN})
    m.store = m.world.store()
    pseudonymous = m.vehicles["v1"]
    assert reason(m.feed(book(m, vin_car, "o1"))) == "VEHICLE_ID_KIND_MISMATCH"
    assert reason(m.feed(book(m, pseudonymous, "o2", vehicle_id_kind="VIN"))) == (
        "VEHICLE_ID_KIND_MISMATCH")
    assert reason(m.feed(book(m, pseudonymous, "o3", vehicle_id_kind="UNKNOWN"))) == (
        "VEHICLE_ID_KIND_MISMATCH")
    reserved(m.feed(book(m, vin_car, "o4", vehicle_id_kind="VIN")))
    assert m.feed(shake(m, vin_car, "o4", vehicle_id_kind="VIN")).rejection is None


def test_binding_functions_name_the_rule_they_break() -> None:
    m = market()
    cal = m.state.calendar
    assert cal is not None
    good = ident(m, m.vehicles["v1"])
    assert binding.identity_problem(cal, good, m.store) is None
    bad = dict(good, connector_hardware_id="c1")  # the SDK's old default
    problem = binding.identity_problem(cal, bad, m.store)
    assert problem is not None and problem.reason == "UNKNOWN_CONNECTOR_HARDWARE"
    assert "hw-c1" in problem.detail
    assert binding.station_jurisdictions(m.store, m.station.credential_id) == {"US-CA"}
    mobile = m.world.credential("truck", ["MOBILE_STATION"], attributes={
        binding.OPERATING_JURISDICTIONS: "US-CA,DE-BY"})
    m.store = m.world.store()
    assert binding.station_jurisdictions(m.store, mobile.credential_id) == {"US-CA", "DE-BY"}
