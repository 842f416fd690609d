"""Issue 3 on the real stack: every kind of bad input is rejected with its own reason, while the
valid events published around it are all admitted."""

from __future__ import annotations

import pytest

from chargemesh.streams.envelope import EventBody, SignedEvent, _encode_body, new_event_id
from chargemesh.streams.keys import Signer
from chargemesh.streams.sdk.participant import Participant, now_ms
from chargemesh.streams.topics import ADMITTED, GOVERNANCE, MARKET, REJECTIONS

from tests.conftest import Mesh
from chargemesh.infra.stack.worker import event_ids, log_tail

pytestmark = pytest.mark.integration

HEARTBEAT = "chargemesh.capacity.v1.StationHeartbeat"


def heartbeat(station: Participant, at_ms: int | None = None,
              author_station_id: str | None = None) -> SignedEvent:
    sid = author_station_id or station.subject_id
    at = now_ms() if at_ms is None else at_ms
    return station.sign(HEARTBEAT, {"station_id": sid, "at_ms": at}, subject_key=sid,
                        occurred_at_ms=at)


def malformed_payload(station: Participant) -> SignedEvent:
    """A correctly signed envelope whose payload is not Avro of its declared schema."""
    good = heartbeat(station)
    body = EventBody(**{**good.body.as_record(), "event_id": new_event_id(),
                        "payload": b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"})
    unsigned = SignedEvent(body, _encode_body(body), ())
    return unsigned.with_signature(station.signer)


def test_bad_input_is_rejected_with_its_reason_and_valid_traffic_flows(mesh: Mesh) -> None:
    world = mesh.world
    t = now_ms()
    station = world.credential("t3-st", ["STATION"], subject_id="t3-station")
    expired = world.credential("t3-old", ["STATION"], subject_id="t3-old-station",
                               valid_until_ms=t - 60_000)
    vehicle = world.credential("t3-veh", ["VEHICLE"], subject_id="t3-station")
    revoked = world.credential("t3-rev", ["STATION"], subject_id="t3-rev-station")
    world.governance.append(world.issuer.revoke("t3-rev", t - 1_000, "SAFETY", at_ms=t - 1_000))
    rogue = Participant.seeded("t3-rogue-authority", secret="tests")
    mesh.publish(*world.governance)
    world.governance.clear()

    impostor = Participant(Signer.generate("t3-st"), "t3-station")
    valid = [heartbeat(station, t + i) for i in range(6)]
    hostile = {
        "BAD_SIGNATURE": heartbeat(impostor, t + 10),
        # a self-declaration that chains to no trust anchor (issue 15, hole 5)
        "UNRECOGNISED_AUTHORITY": rogue.declare_authority("Rogue", "US-CA", ["AUTHORITY"],
                                                          at_ms=t + 11),
        "CREDENTIAL_EXPIRED": heartbeat(expired, t + 12),
        "ROLE_NOT_PERMITTED": heartbeat(vehicle, t + 13),
        "CREDENTIAL_REVOKED": heartbeat(revoked, t + 14),
        "MALFORMED_PAYLOAD": malformed_payload(station),
        "UNKNOWN_CREDENTIAL": heartbeat(Participant.generate("t3-nobody", "t3-x"), t + 15),
    }
    replayed = valid[0]
    sequence = [valid[0], *list(hostile.values())[:4], valid[1], valid[2],
                *list(hostile.values())[4:], valid[3], replayed, valid[4], valid[5]]
    mesh.publish(*sequence)
    pub_garbage = b"\x00garbage that is not Avro at all"
    from chargemesh.infra.stack.worker import publisher

    pub = publisher(mesh.settings)
    pub.publish_raw(MARKET.name, "t3-station", pub_garbage)
    pub.flush()

    hostile_ids = {event.event_id: reason for reason, event in hostile.items()}
    rejections = mesh.reader(REJECTIONS.name)
    admitted = mesh.reader(ADMITTED.name)
    try:
        records = rejections.wait_for(lambda rs: _reasons(rs, hostile_ids, replayed.event_id)
                                      is not None, timeout_s=60, workers=(mesh.worker,))
    except TimeoutError:
        pytest.fail("rejections missing; worker log:\n" + log_tail(mesh.worker.log_path))
    found = _reasons(records, hostile_ids, replayed.event_id)
    assert found is not None
    assert found["by_reason"] == {reason: 1 for reason in hostile}
    assert found["replay"] == 1, "the replayed event id is rejected exactly once"
    assert found["garbage"] == "MALFORMED_ENVELOPE"

    wanted = {e.event_id for e in valid}
    admitted.wait_for(lambda rs: wanted <= event_ids(rs), timeout_s=30)
    admitted_ids = event_ids(admitted.records)
    assert not (set(hostile_ids) & admitted_ids), "no hostile event was admitted"
    copies = [r for r in admitted.records if r.key == b"t3-station"]
    assert len([r for r in copies if r.event().event_id == replayed.event_id]) == 1
    # governance: the rogue authority's self-declaration is not even recorded
    gov = [r for r in admitted.records if r.headers.get("source_topic") == GOVERNANCE.name.encode()]
    assert not any(r.event().body.author_credential_id == "t3-rogue-authority" for r in gov)
    rejections.close()
    admitted.close()

    # ... and the same answer, queryable, in ClickHouse (written by the sink)
    rows = mesh.wait_rows("SELECT event_id, reason_code FROM rejections FINAL "
                          "WHERE event_id IN %(ids)s", {"ids": tuple(hostile_ids)},
                          count=len(hostile_ids))
    assert dict(rows) == hostile_ids
    valid_rows = mesh.wait_rows("SELECT event_id FROM events FINAL WHERE event_id IN %(ids)s",
                                {"ids": tuple(wanted)}, count=len(wanted))
    assert {r[0] for r in valid_rows} == wanted


def _reasons(records: list, hostile_ids: dict[str, str], replay_id: str) -> dict | None:
    by_reason: dict[str, int] = {}
    replay = 0
    garbage = None
    for r in records:
        rec = r.rejection()
        if rec["event_id"] in hostile_ids:
            assert rec["reason_code"] == hostile_ids[rec["event_id"]], rec
            by_reason[rec["reason_code"]] = by_reason.get(rec["reason_code"], 0) + 1
        elif rec["event_id"] == replay_id:
            assert rec["reason_code"] == "REPLAYED_EVENT_ID", rec
            replay += 1
        elif rec["raw_bytes"].startswith(b"\x00garbage"):
            garbage = rec["reason_code"]
    if len(by_reason) < len(set(hostile_ids.values())) or replay == 0 or garbage is None:
        return None
    return {"by_reason": by_reason, "replay": replay, "garbage": garbage}
