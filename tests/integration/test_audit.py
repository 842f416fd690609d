"""P5 on the real stack: a regulator replays its settlements from the topics and from the
ClickHouse archive, checks the signed Merkle checkpoints, and proves records in or out of the log.

The story: a rate authority of its own (recognised by the root) files a tariff; a station under
it runs two metered sessions to final settlement. A clean audit recomputes both settlements to
the last cent and exits 0. One byte of an archived meter reading is then changed in ClickHouse:
the archive audit names that event and exits non-zero.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from chargemesh.infra.cli import audit as cli_audit
from chargemesh.infra.stack.worker import Record, TopicReader
from chargemesh.processors.audit.replay import AuditReport
from chargemesh.schemas.codec import catalog
from chargemesh.streams import merkle
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.envelope import SignedEvent, open_envelope
from chargemesh.streams.sdk.participant import Participant, now_ms
from chargemesh.streams.topics import SETTLEMENTS
from chargemesh.units import MINUTE_MS

from tests.conftest import Mesh
from tests.support.market import SLOT_MS, future_hour

pytestmark = pytest.mark.integration
PREFIX = "p5audit"
TARIFF = {"tax_percent": "8.25", "congestion_fee_per_kwh": "0.02",
          "renewable_adder_per_kwh": "0.015", "rounding": "HALF_UP", "minor_units": 2}
READING = "chargemesh.session.v1.MeterReadingRecorded"


def settled_sessions(mesh: Mesh, prefix: str = PREFIX, count: int = 2) -> dict[str, Any]:
    """An authority, its tariff, one station and ``count`` sessions driven to final
    settlement."""
    world, t = mesh.world, now_ms()
    authority = Participant.seeded(f"{prefix}-ra", secret="tests")
    station = world.credential(f"{prefix}-st-cred", ["STATION"], subject_id=f"{prefix}-station")
    meter = world.credential(f"{prefix}-meter", ["METER"])
    vehicles = [world.credential(f"{prefix}-ev{i}-cred", ["VEHICLE"], subject_id=f"{prefix}-ev{i}")
                for i in range(count)]
    world.governance += [
        world.root.recognise_authority(authority, "US-CA", ["RATE_AUTHORITY"], at_ms=t),
        # The vehicles are credentialed under the root: roaming needs reciprocity (P1).
        sdk.reciprocity_agreed(world.root, authority, agreement_id=f"{prefix}-recip", at_ms=t),
        sdk.tariff_filed(authority, tariff_id=f"{prefix}-tariff", jurisdiction="US-CA",
                         currency="USD", ceiling_per_kwh="0.80", at_ms=t, **TARIFF),
        sdk.rules_published(authority, rules_version=f"{prefix}-rules", jurisdiction="US-CA",
                            at_ms=t),
    ]
    mesh.publish(*world.governance)
    world.governance.clear()
    start = future_hour(t)
    mesh.publish(sdk.calendar_published(
        station, rate_authority_id=authority.credential_id, jurisdiction="US-CA",
        tariff_id=f"{prefix}-tariff", rules_version=f"{prefix}-rules",
        connectors=[sdk.connector(f"c{i}", 150_000, meter_credential_id=meter.credential_id)
                    for i in range(count)],
        slot_duration_ms=SLOT_MS, horizon_start_ms=start, horizon_end_ms=start + 6 * 3_600_000,
        posted_rate_per_kwh="0.40", currency="USD", grid_zone_id=f"{prefix}-zone", at_ms=t))
    phases: list[list[SignedEvent]] = [[] for _ in range(6)]
    began = start + SLOT_MS
    for i, vehicle in enumerate(vehicles):
        sid, cid, order_id = f"{prefix}-s{i}", f"c{i}", f"{prefix}-o{i}"
        ident = sdk.identity(station_id=station.subject_id, vehicle=vehicle,
                             rate_authority_id=authority.credential_id, jurisdiction="US-CA",
                             connector_id=cid)
        terms = sdk.claim(energy_wh=40_000, start_ms=began, stop_ms=began + 4 * SLOT_MS,
                          ceiling_rate_per_kwh="0.90", currency="USD")
        phases[0].append(sdk.order(vehicle, "posted", order_id=order_id, ident=ident,
                                   terms=terms, rate_per_kwh="0.40", at_ms=t))
        phases[1].append(sdk.handshake(station, vehicle, session_id=sid,
                                       reservation_id=f"res:{order_id}", ident=ident,
                                       started_at_ms=began, meter_start_wh=1_000))
        phases[2] += [sdk.meter_reading(meter, session_id=sid, station_id=station.subject_id,
                                        connector_id=cid, seq=seq, import_wh=wh + 7 * i,
                                        at_ms=began + minutes * MINUTE_MS)
                      for seq, (minutes, wh) in enumerate([(10, 9_337), (20, 17_901)], 1)]
        close = sdk.meter_closed_out(station, session_id=sid, connector_id=cid,
                                     closed_at_ms=began + 30 * MINUTE_MS,
                                     final_import_wh=26_555 + 11 * i, last_reading_seq=2)
        phases[3].append(sdk.session_stopped(vehicle, session_id=sid,
                                             station_id=station.subject_id,
                                             at_ms=began + 30 * MINUTE_MS))
        phases[4].append(close)
        phases[5].append(sdk.close_out_countersigned(vehicle, close, began + 31 * MINUTE_MS))
    reader = TopicReader(mesh.settings, SETTLEMENTS.name)
    mesh.publish(*[e for phase in phases for e in phase])
    sessions = {f"{prefix}-s{i}" for i in range(count)}
    try:
        try:
            reader.wait_for(lambda rs: sessions <= finalised(rs, prefix), timeout_s=60,
                            workers=(mesh.worker,))
        except TimeoutError:
            _explain(mesh, prefix)
            raise
        admitted = {r.payload()["session_id"]: (r.event(), r.payload()) for r in reader.records
                    if r.key and r.key.decode(errors="replace") in sessions
                    and r.event().event_type.endswith("SettlementAdmitted")}
    finally:
        reader.close()
    readings = list(phases[2])
    return {"authority": authority.credential_id, "admitted": admitted, "readings": readings}


def finalised(records: list[Record], prefix: str) -> set[str]:
    return {r.key.decode(errors="replace") for r in records if r.key and r.key.decode(errors="replace").startswith(prefix)
            and r.event().event_type.endswith("SettlementFinalised")}


@pytest.fixture(scope="module")
def audited(mesh: Mesh) -> dict[str, Any]:
    world = settled_sessions(mesh)
    ids = tuple(e.event_id for e, _ in world["admitted"].values())
    # The session's sink archives the settlements (and everything before them).
    mesh.wait_rows("SELECT event_id FROM events FINAL WHERE event_id IN %(ids)s",
                   {"ids": ids}, count=len(ids))
    world["checkpoints"] = cli_audit.publish_checkpoints(mesh.settings)
    return world


def audit_cli(mesh: Mesh, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="250", **mesh.settings.as_environ())
    return subprocess.run([str(Path(sys.executable).parent / "chargemesh"), *args],
                          env=env, capture_output=True, text=True, timeout=120, check=False)


def test_a_clean_audit_recomputes_every_settlement_exactly_and_exits_0(
        mesh: Mesh, audited: dict[str, Any]) -> None:
    assert audited["checkpoints"], "the checkpointer signed the lineage logs"
    done = audit_cli(mesh, "audit", "--authority", audited["authority"], "--json")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["ok"] and report["findings"] == []
    assert report["settlements_checked"] == 2
    assert report["settlements_recomputed"] == 2 and report["settlements_final"] == 2
    admitted_total = sum((p["total_amount"] for _, p in audited["admitted"].values()), Decimal(0))
    assert Decimal(report["totals_by_currency"]["USD"]) == admitted_total
    assert report["checkpoints_verified"] >= len(audited["checkpoints"])
    # The sink archives every signed checkpoint into log_checkpoints.
    signed = {(c["log_id"], c["tree_size"]) for c in audited["checkpoints"]}
    rows = mesh.wait_rows("SELECT log_id, tree_size FROM log_checkpoints FINAL WHERE event_id "
                          "IN %(ids)s", {"ids": tuple(c["event_id"] for c in
                                                      audited["checkpoints"])},
                          count=len(signed))
    assert set(rows) == signed
    assert report["events_verified"] >= 2 * 8, "each session's evidence was re-verified"
    print(f"audit replay: {report['events_replayed']} records at {report['events_per_s']}/s")


def test_an_inclusion_proof_verifies_against_the_signed_checkpoint_and_a_forgery_is_not_in_it(
        mesh: Mesh, audited: dict[str, Any]) -> None:
    settlement, _ = audited["admitted"][f"{PREFIX}-s0"]
    answer = cli_audit.prove(mesh.settings, settlement.event_id)
    assert answer["included"], answer
    proof = answer["proof"]
    path = [bytes.fromhex(h) for h in proof["path"]]
    root = bytes.fromhex(proof["root_hash"])
    genuine = settlement.encode()
    assert merkle.verify_inclusion(genuine, proof["leaf_index"], proof["tree_size"], path, root)
    forged = bytearray(genuine)
    forged[-1] ^= 0x01
    assert not merkle.verify_inclusion(bytes(forged), proof["leaf_index"], proof["tree_size"],
                                       path, root)
    absent = cli_audit.prove(mesh.settings, raw=bytes(forged))
    assert not absent["included"] and absent["proof"] is None
    done = audit_cli(mesh, "audit", "proof", settlement.event_id)
    assert done.returncode == 0 and json.loads(done.stdout)["included"]


def one_byte_changed(raw: bytes, event: SignedEvent, payload: dict[str, Any]) -> bytes:
    """The archived envelope with the meter reading's energy raised by 1 Wh: one byte."""
    _, changed = catalog().encode(READING, dict(payload, cumulative_import_wh=payload[
        "cumulative_import_wh"] + 1))
    at = next(i for i, (a, b) in enumerate(zip(event.body.payload, changed)) if a != b)
    position = raw.index(event.body.payload) + at
    return raw[:position] + bytes([changed[at]]) + raw[position + 1:]


def test_one_byte_of_an_archived_event_changed_and_the_archive_audit_names_it(
        mesh: Mesh, audited: dict[str, Any]) -> None:
    clean = cli_audit.run_audit(mesh.settings, audited["authority"], (0, 2**62), "clickhouse")
    assert clean.ok, [f.as_json() for f in clean.findings]
    assert clean.settlements_recomputed == 2

    target = audited["readings"][1]  # session s0's second reading
    columns = [str(row[0]) for row in mesh.query("DESCRIBE TABLE events")]
    from chargemesh.sinks.migrate import clickhouse_client

    client = clickhouse_client(mesh.settings)
    try:
        (row,) = client.execute(f"SELECT {', '.join(columns)} FROM events FINAL "
                                "WHERE event_id = %(id)s", {"id": target.event_id},
                                settings={"strings_as_bytes": True})
        archived = dict(zip(columns, row))
        raw = bytes(archived["envelope_bytes"])
        event = open_envelope(raw)
        from chargemesh.streams.envelope import open_payload

        tampered = one_byte_changed(raw, event, open_payload(event))
        assert sum(a != b for a, b in zip(raw, tampered)) == 1 and len(raw) == len(tampered)
        archived["envelope_bytes"] = tampered
        client.execute(f"INSERT INTO events ({', '.join(columns)}) VALUES",
                       [tuple(archived[c] for c in columns)])
        client.execute("OPTIMIZE TABLE events FINAL")
        (now_archived,) = client.execute("SELECT envelope_bytes FROM events FINAL WHERE "
                                         "event_id = %(id)s", {"id": target.event_id},
                                         settings={"strings_as_bytes": True})
    finally:
        client.disconnect()
    assert bytes(now_archived[0]) == tampered, "the archive now holds the changed bytes"

    report: AuditReport = cli_audit.run_audit(mesh.settings, audited["authority"], (0, 2**62),
                                              "clickhouse")
    named = {(f.code, f.event_id) for f in report.findings}
    assert ("BAD_SIGNATURE", target.event_id) in named, report.as_json()["findings"]
    assert ("ARCHIVE_MISMATCH", target.event_id) in named
    # The settlement that cited it is named too: its evidence no longer verifies.
    (settlement, _) = audited["admitted"][f"{PREFIX}-s0"]
    assert ("EVIDENCE_NOT_VERIFIABLE", settlement.event_id) in named
    assert all(f.session_id in ("", f"{PREFIX}-s0") for f in report.findings)
    done = audit_cli(mesh, "audit", "--authority", audited["authority"], "--source",
                     "clickhouse", "--record")
    assert done.returncode == 1 and target.event_id in done.stdout
    rows = mesh.query("SELECT code FROM audit_findings FINAL WHERE authority_id = %(a)s "
                      "AND event_id = %(id)s", {"a": audited["authority"], "id": target.event_id})
    assert {"BAD_SIGNATURE", "ARCHIVE_MISMATCH"} <= {code for (code,) in rows}


def _explain(mesh: Mesh, prefix: str) -> None:
    from chargemesh.streams.topics import REJECTIONS

    rej = TopicReader(mesh.settings, REJECTIONS.name)
    rej.poll(2)
    rej.close()
    for r in rej.records:
        rec = r.rejection()
        if prefix in rec["author_credential_id"] or prefix in str(rec["detail"]):
            print("REJECTED", rec["event_type"], rec["reason_code"], rec["detail"])
