"""Issue 16 on the real stack: the regulator's audit recomputes the billing feed's new records.

A station's settlement expires (its vehicle never countersigns within the rules' finality
window) and another is reversed after its vehicle's issuer is revoked: the audit of the topics
finds nothing on either (the expiry was due and named the signer really missing; the reversal
rests on the revocation and negates the charge exactly). The reversal record altered (one line's
amount changed by a cent, re-signed with the processors' own key, so every signature still verifies) is
found and named REVERSAL_MISMATCH; an expiry altered to name the signer that did sign,
EXPIRED_SIGNER_NOT_MISSING.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from chargemesh.infra.config import Settings
from chargemesh.infra.stack.embedded import EmbeddedStack
from chargemesh.infra.cli import audit as cli_audit
from chargemesh.processors.audit.replay import AuditSource, audit
from chargemesh.streams.envelope import open_envelope, open_payload, seal
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.sdk.key_files import load_key_file
from chargemesh.streams.sdk.participant import Participant, now_ms
from chargemesh.units import MINUTE_MS

from tests.conftest import Mesh, running_mesh
from tests.integration.test_market_rules_finality import _settle
from tests.integration.test_sessions_pipeline import Session, settlement_records
from tests.support.market import HOUR_MS, open_market
from tests.support.world import T0_MS

pytestmark = pytest.mark.integration
REVERSED = "chargemesh.settlement.v1.SettlementReversed"
EXPIRED = "chargemesh.settlement.v1.SettlementExpired"


def _altered(source: AuditSource, event_type: str, session_id: str, signer: Participant,
             change: Any) -> AuditSource:
    """``source`` with the record of ``event_type`` for ``session_id`` changed by ``change``
    (payload -> payload) and signed again by ``signer`` (same id, time, subject and link)."""
    logs = []
    for record in source.logs:
        event = open_envelope(record.value) if record.value else None
        if event is not None and event.event_type == event_type and open_payload(
                event)["session_id"] == session_id:
            b = event.body
            forged = seal(event_type, change(open_payload(event)), author=signer.signer,
                          subject_key=b.subject_key, occurred_at_ms=b.occurred_at_ms,
                          chain_id=b.chain_id, prev_hash=b.prev_hash, event_id=b.event_id)
            record = dataclasses.replace(record, value=forged.encode())
        logs.append(record)
    return dataclasses.replace(source, logs=logs)


def test_expiries_and_reversals_audit_clean_and_an_altered_one_is_named(mesh: Mesh) -> None:
    world = mesh.world
    issuer = Participant.seeded("issuer-audrev", secret="tests")
    revoked = Participant.seeded("audrev-v1-cred", "audrev-v1", secret="tests")
    mesh.publish(world.root.delegate_issuer(issuer, ["VEHICLE"], ["US-CA"], at_ms=T0_MS),
                 issuer.issue_credential(revoked, ["VEHICLE"], "US-CA", at_ms=T0_MS))
    market = open_market(mesh, "audrev", now_ms(), [sdk.connector(f"c{i}", 50_000)
                                                    for i in range(1, 4)],
                         hours=6, grid_zone_id="zone-audrev", finality_window_ms=HOUR_MS)
    start = market.start_ms
    unsigned = Session(market, market.vehicle("unsigned"), "unsigned", start, connector_id="c1")
    upheld = Session(market, market.vehicle("upheld"), "upheld", start, connector_id="c2")
    hit = Session(market, revoked, "hit", start + 30 * MINUTE_MS, connector_id="c3")
    mesh.publish(*world.governance)
    world.governance.clear()
    mesh.publish(unsigned.booking, upheld.booking, hit.booking)
    _settle(mesh, (unsigned, None), (upheld, 26))
    _settle(mesh, (hit, 56))
    charge = settlement_records(mesh, hit.session_id, {"SettlementFinalised",
                                                       "SettlementAdmitted"})
    assert charge["SettlementAdmitted"][1]["total_amount"] != Decimal(0)
    mesh.publish(world.root.revoke(issuer.credential_id, effective_at_ms=start + 40 * MINUTE_MS,
                                   reason_code="KEY_COMPROMISE"))
    settlement_records(mesh, hit.session_id, {"SettlementReversed"})
    closed_at = start + 25 * MINUTE_MS
    mesh.publish(sdk.heartbeat(market.station, closed_at + HOUR_MS))  # the window closes
    settlement_records(mesh, unsigned.session_id, {"SettlementExpired"})

    ours = {unsigned.session_id, upheld.session_id, hit.session_id}
    source = cli_audit.kafka_source(mesh.settings)
    anchors = cli_audit.load_anchors(mesh.settings)
    clean = audit(source, anchors, market.authority_id)
    assert [(f.code, f.session_id, f.event_type, f.detail) for f in clean.findings
            if f.session_id in ours] == []

    processors = load_key_file(mesh.settings.processor_key_path)

    def halved(p: dict[str, Any]) -> dict[str, Any]:
        lines = [dict(ln) for ln in p["lines"]]
        lines[0]["amount"] = lines[0]["amount"] + Decimal("0.01")
        return dict(p, lines=lines)

    forged = audit(_altered(source, REVERSED, hit.session_id, processors, halved), anchors,
                   market.authority_id)
    named = {(f.code, f.session_id) for f in forged.findings}
    assert ("REVERSAL_MISMATCH", hit.session_id) in named, forged.as_json()["findings"]
    assert not any(f.code in ("BAD_SIGNATURE", "ARCHIVE_MISMATCH") for f in forged.findings
                   if f.session_id in ours)

    def vehicle_named(p: dict[str, Any]) -> dict[str, Any]:
        return dict(p, missing_signer_ids=[market.station.credential_id])

    forged = audit(_altered(source, EXPIRED, unsigned.session_id, processors, vehicle_named),
                   anchors, market.authority_id)
    assert ("EXPIRED_SIGNER_NOT_MISSING", unsigned.session_id) in {
        (f.code, f.session_id) for f in forged.findings}, forged.as_json()["findings"]


PRICED_DAY = ("m5-", "m6cap-", "m6ign-", "mr3-night-")


@pytest.fixture
def own_mesh(new_stack_settings: Callable[[], Settings]) -> Iterator[Mesh]:
    """A stack of its own: the market-rules scenarios below are those tests' own, with their
    fixed ids, and run again on the session's stack they would replay."""
    settings = new_stack_settings()
    stack = EmbeddedStack(settings)
    stack.up()
    try:
        with running_mesh(settings) as private:
            yield private
    finally:
        stack.down()


def test_curtailment_repricing_and_tariff_versions_audit_clean_and_altered_ones_are_named(
        own_mesh: Mesh) -> None:
    """The market-rules scenarios run on this stack (a curtailed and restored session, a spike
    capped at the filed ceiling for its window, an ignored re-price stopped at its deadline, a
    session over a tariff version's midnight): the audit recomputes them with no finding. A
    re-signed settlement line above the filed ceiling is named RATE_ABOVE_FILED_CEILING, and a
    re-signed stop earlier than what the settlement billed BILLED_AFTER_STOP."""
    mesh = own_mesh
    from tests.integration import (
        test_market_rules_curtailment as curtailment,
    )
    from tests.integration import (
        test_market_rules_repricing as repricing,
    )
    from tests.integration import (
        test_market_rules_tariffs as tariffs,
    )

    curtailment.test_an_operators_curtailment_binds_the_running_session_and_restored_lifts_it(
        mesh)
    repricing.test_a_price_spike_is_capped_at_the_filed_ceiling_and_billed_only_in_its_window(
        mesh)
    repricing.test_an_ignored_reprice_stops_the_session_at_the_deadline_and_it_settles_to_then(
        mesh)
    tariffs.test_a_session_over_midnight_bills_each_part_under_the_tariff_in_force(mesh)

    source = cli_audit.kafka_source(mesh.settings)
    anchors = cli_audit.load_anchors(mesh.settings)
    authority = mesh.world.root.credential_id
    clean = audit(source, anchors, authority)
    ours = [f for f in clean.findings if f.session_id.startswith(PRICED_DAY)]
    assert [(f.code, f.session_id, f.event_type, f.detail) for f in ours] == []
    assert clean.settlements_recomputed >= 4

    processors = load_key_file(mesh.settings.processor_key_path)
    admitted = "chargemesh.settlement.v1.SettlementAdmitted"

    def above_ceiling(p: dict[str, Any]) -> dict[str, Any]:
        lines = [dict(ln) for ln in p["lines"]]
        repriced = next(ln for ln in lines if ln["kind"] == "ENERGY_REPRICED")
        repriced["unit_rate_per_kwh"] = Decimal("1.20")
        return dict(p, lines=lines)

    forged = audit(_altered(source, admitted, "m6cap-s1", processors, above_ceiling), anchors,
                   authority)
    assert ("RATE_ABOVE_FILED_CEILING", "m6cap-s1") in {
        (f.code, f.session_id) for f in forged.findings}, forged.as_json()["findings"]

    def earlier(p: dict[str, Any]) -> dict[str, Any]:
        return dict(p, stopped_at_ms=int(p["stopped_at_ms"]) - 10 * MINUTE_MS)

    forged = audit(_altered(source, "chargemesh.session.v1.SessionStopped", "m6ign-s1",
                            processors, earlier), anchors, authority)
    assert ("BILLED_AFTER_STOP", "m6ign-s1") in {
        (f.code, f.session_id) for f in forged.findings}, forged.as_json()["findings"]
