"""Issue 16, finality and the billing feed (M6, P4), pure: a settlement whose signatures do not
all arrive within the rate authority's finality window expires on the billing feed naming the
missing signers; a settlement judged INADMISSIBLE after a revocation is reversed by a record of
its own naming the settlement it voids."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from chargemesh.processors.ledger import commands
from chargemesh.processors.ledger import state as ledger
from chargemesh.processors.ledger.sessions import FINALITY_WINDOW_MS_DEFAULT
from chargemesh.streams.sdk import participant as sdk
from chargemesh.units import HOUR_MS, MINUTE_MS

from tests.support.world import make_world, pairs
from tests.unit.test_sessions import Station, settlement_of

ROUTED = "chargemesh.ledger.v1.RevocationRouted"


def settled(name: str) -> tuple[Station, Any, dict[str, Any]]:
    st = Station(make_world(), name, sdk.connector("c1", 50_000),
                 {"currency": "USD", "ceiling_per_kwh": "0.80", "tax_percent": "10"},
                 slot_ms=HOUR_MS)
    steps, close = st.session(20_000, 1, [(20, 10_000)], (40, 20_000))
    assert all(s.rejection is None for s in steps), [s.rejection for s in steps]
    return st, close, settlement_of(steps[-1])


def revoke(st: Station, credential_id: str, effective_at_ms: int) -> ledger.Outcome:
    payload: dict[str, Any] = {
        "routing_key": "revocation:x:0", "market_partition": 0, "revocation_event_id": "rev-1",
        "revoked_credential_id": credential_id, "effective_at_ms": effective_at_ms,
        "revoked_credential_ids": [credential_id], "cascade_truncated": False,
        "revocation_event": b""}
    cmd = ledger.Command(ROUTED, payload, st.state.clock_ms, "processor", "routed-1")
    return commands.handle(st.state, cmd, st.store)


# ---- finality window -----------------------------------------------------------------------------


def test_a_settlement_missing_a_signature_expires_when_the_window_closes_naming_the_signer() -> None:
    st, close, admitted = settled("exp")
    closed_at = st.start_ms + 40 * MINUTE_MS
    before = st.feed(sdk.heartbeat(st.station, closed_at + FINALITY_WINDOW_MS_DEFAULT - 1))
    assert before.decisions == []
    at = st.feed(sdk.heartbeat(st.station, closed_at + FINALITY_WINDOW_MS_DEFAULT))
    (kind, expired), = pairs(at.decisions)
    assert kind == "SettlementExpired" and at.decisions[0].topic == "chargemesh.settlements.v1"
    assert expired == {
        "settlement_id": admitted["settlement_id"], "session_id": "s1", "station_id": "exp",
        "required_signer_ids": [st.station.credential_id, st.vehicle.credential_id],
        "signer_ids": [st.station.credential_id],
        "missing_signer_ids": [st.vehicle.credential_id], "closed_at_ms": closed_at,
        "finality_window_ms": FINALITY_WINDOW_MS_DEFAULT,
        "expired_at_ms": closed_at + FINALITY_WINDOW_MS_DEFAULT}
    assert st.state.extra["sessions"]["s1"]["status"] == "EXPIRED"
    late = st.feed(sdk.close_out_countersigned(st.vehicle, close, closed_at
                                               + FINALITY_WINDOW_MS_DEFAULT + MINUTE_MS))
    assert late.rejection is not None and late.rejection.reason == "SETTLEMENT_EXPIRED"
    assert late.decisions == []
    again = st.feed(sdk.heartbeat(st.station, closed_at + 2 * FINALITY_WINDOW_MS_DEFAULT))
    assert again.decisions == []  # expired once


def test_the_rate_authoritys_rules_declare_the_window() -> None:
    st, close, _ = settled("win")
    st.state.calendar["rules"]["finality_window_ms"] = 2 * HOUR_MS  # as its rules would copy in
    closed_at = st.start_ms + 40 * MINUTE_MS
    at = st.feed(sdk.heartbeat(st.station, closed_at + 2 * HOUR_MS))
    assert [k for k, _ in pairs(at.decisions)] == ["SettlementExpired"]
    assert at.decisions[0].payload["finality_window_ms"] == 2 * HOUR_MS


def test_rules_published_without_the_field_decode_with_the_default_window() -> None:
    world = make_world()
    world.governance.append(sdk.rules_published(world.root, rules_version="r-new",
                                                jurisdiction="US-CA", finality_window_ms=HOUR_MS))
    store = world.store()
    assert store.rules["r-new"]["finality_window_ms"] == HOUR_MS
    assert store.rules["r-new"]["dispute_window_ms"] == 90 * 24 * HOUR_MS


def test_a_countersignature_inside_the_window_settles_as_before() -> None:
    st, close, _ = settled("fin")
    closed_at = st.start_ms + 40 * MINUTE_MS
    final = st.feed(sdk.close_out_countersigned(st.vehicle, close,
                                                closed_at + FINALITY_WINDOW_MS_DEFAULT - 1))
    assert [k for k, _ in pairs(final.decisions)] == ["SettlementFinalised"]
    later = st.feed(sdk.heartbeat(st.station, closed_at + 3 * FINALITY_WINDOW_MS_DEFAULT))
    assert later.decisions == []  # a final settlement never expires


# ---- reversal ------------------------------------------------------------------------------------


def test_a_final_settlement_judged_inadmissible_is_reversed_on_the_billing_feed() -> None:
    st, close, admitted = settled("rev")
    st.feed(sdk.close_out_countersigned(st.vehicle, close, st.start_ms + 41 * MINUTE_MS))
    outcome = revoke(st, st.vehicle.credential_id, effective_at_ms=st.start_ms + 30 * MINUTE_MS)
    kinds = [k for k, _ in pairs(outcome.decisions)]
    assert kinds == ["CredentialReevaluated", "SettlementReversed"]
    reversal = outcome.decisions[1]
    assert reversal.topic == "chargemesh.settlements.v1" and reversal.key == "s1"
    p = reversal.payload
    assert (p["settlement_id"], p["reverses_settlement_id"]) == ("rev:s1",
                                                                  admitted["settlement_id"])
    assert p["total_amount"] == -admitted["total_amount"] == Decimal("-6.60")
    assert [(ln["kind"], ln["amount"], ln["quantity_wh"]) for ln in p["lines"]] == [
        (ln["kind"], -ln["amount"], -ln["quantity_wh"]) for ln in admitted["lines"]]
    assert sum(ln["amount"] for ln in p["lines"]) == p["total_amount"]
    assert (p["reason_code"], p["revoked_credential_id"], p["cause_event_id"]) == (
        "CREDENTIAL_REVOKED", st.vehicle.credential_id, "rev-1")
    assert p["energy_import_wh"] == -20_000 and p["currency"] == "USD"
    # A dispute can no longer correct it (the station, not revoked, tries).
    opened = st.feed(sdk.dispute_opened(st.station, dispute_id="d1", session_id="s1",
                                        station_id="rev", kind="METER_DISPUTE", claim="x",
                                        evidence_event_ids=[close.event_id],
                                        at_ms=st.state.clock_ms))
    assert opened.rejection is not None and opened.rejection.reason == "SETTLEMENT_VOIDED"


def test_a_pending_settlement_judged_inadmissible_is_reversed_too_and_never_expires() -> None:
    st, close, admitted = settled("revp")
    outcome = revoke(st, st.station.credential_id, effective_at_ms=st.start_ms + 30 * MINUTE_MS)
    reversed_ = [d for k, d in pairs(outcome.decisions) if k == "SettlementReversed"]
    assert [d["reverses_settlement_id"] for d in reversed_] == [admitted["settlement_id"]]
    later = st.feed(sdk.heartbeat(st.station, st.start_ms + 3 * FINALITY_WINDOW_MS_DEFAULT))
    assert [k for k, _ in pairs(later.decisions)] == []


def test_a_settlement_closed_out_before_the_revocation_is_upheld_and_not_reversed() -> None:
    st, close, _ = settled("upheld")
    outcome = revoke(st, st.vehicle.credential_id, effective_at_ms=st.start_ms + 50 * MINUTE_MS)
    assert [k for k, _ in pairs(outcome.decisions)] == ["CredentialReevaluated"]
    assert outcome.decisions[0].payload["outcome"] == "UPHELD"
