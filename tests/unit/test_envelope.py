"""Encode / decode / sign / verify round-trips for every event type, and tamper detection."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chargemesh.schemas.codec import DecodeError, catalog, crc64_avro
from chargemesh.streams.envelope import open_envelope, open_payload, seal
from chargemesh.streams.keys import Signer

from tests.support.avro_strategies import strategy_for

SIGNER = Signer.from_seed("cred-1", bytes(range(32)))
OTHER = Signer.from_seed("cred-2", bytes(range(1, 33)))
ENVELOPE_TYPES = {"chargemesh.envelope.v1.SignedEvent", "chargemesh.envelope.v1.EventRejected"}
EVENT_TYPES = [name for name in catalog().names() if name not in ENVELOPE_TYPES]


@functools.lru_cache(maxsize=None)
def _strategy(name: str) -> st.SearchStrategy[Any]:
    return strategy_for(_raw_schema(name))


def _raw_schema(name: str) -> dict[str, Any]:
    root = resources.files("chargemesh.schemas").joinpath("avro")
    return json.loads(root.joinpath(f"{name}.avsc").read_text())


def test_every_mission_event_has_a_schema() -> None:
    expected = {
        "AuthorityDeclared", "AuthorityRecognised", "IssuerDelegated", "CredentialIssued",
        "CredentialRevoked", "ReciprocityAgreed", "TariffFiled", "AllocationRulesPublished",
        "SlotCalendarPublished", "CapacityChanged", "BidPlaced", "PostedPriceAccepted",
        "WalkUpRequested", "SlotReserved", "SlotReleased", "SlotReallocated", "OrderRejected",
        "ConnectorHandshakeCompleted", "MeterReadingRecorded", "GridEventDeclared",
        "RepriceProposed", "RepriceAccepted", "SessionStopped", "MeterClosedOut",
        "SettlementCoSigned", "SettlementAdmitted", "DisputeOpened", "DisputeEvidenceSubmitted",
        "DisputeResolved", "ChargingSessionDeclared",
    }
    assert expected <= {name.rsplit(".", 1)[1] for name in EVENT_TYPES}
    for name in EVENT_TYPES:
        assert name.split(".")[2] == "v1" and name.startswith("chargemesh.")


def test_fingerprint_matches_the_avro_spec_example() -> None:
    # Avro spec: the CRC-64-AVRO fingerprint of "int" is 0x7275d51a3f395c8f (little-endian on wire)
    assert crc64_avro(b'"int"') == bytes.fromhex("8f5c393f1ad57572")


def test_single_object_encoding_decodes_with_plain_fastavro_and_the_avsc() -> None:
    payload = {"reservation_id": "r1", "station_id": "st-1", "reason": "plans changed"}
    wire = catalog().single_object_encode("chargemesh.orders.v1.ReservationCancelled", payload)
    assert wire[:2] == b"\xc3\x01"
    parsed = fastavro.parse_schema(_raw_schema("chargemesh.orders.v1.ReservationCancelled"))
    import io

    assert fastavro.schemaless_reader(io.BytesIO(wire[10:]), parsed, parsed) == payload


@pytest.mark.parametrize("event_type", EVENT_TYPES)
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_and_any_flipped_byte_fails(event_type: str, data: st.DataObject) -> None:
    record = data.draw(_strategy(event_type))
    event = seal(event_type, record, author=SIGNER, subject_key="k", occurred_at_ms=1,
                 co_signers=(OTHER,))
    wire = event.encode()
    opened = open_envelope(wire)
    assert opened.verify_by("cred-1", SIGNER.public_key)
    assert opened.verify_by("cred-2", OTHER.public_key)
    assert opened.event_hash == event.event_hash
    assert open_payload(opened) == open_payload(event)

    position = data.draw(st.integers(min_value=0, max_value=len(wire) - 1))
    flip = data.draw(st.integers(min_value=1, max_value=255))
    tampered = bytearray(wire)
    tampered[position] ^= flip
    try:
        reopened = open_envelope(bytes(tampered))
    except DecodeError:
        return  # rejected as malformed: fine
    both_verify = reopened.verify_by("cred-1", SIGNER.public_key) and reopened.verify_by(
        "cred-2", OTHER.public_key
    )
    assert not both_verify, f"flipping byte {position} went unnoticed"


def test_evolved_reader_schema_reads_v1_events() -> None:
    """Old events must keep decoding: write with v1, read with a reader that added a field."""
    v1 = _raw_schema("chargemesh.session.v1.MeterReadingRecorded")
    evolved = json.loads(json.dumps(v1))
    evolved["fields"].append({"name": "meter_firmware", "type": "string", "default": "unknown"})
    from chargemesh.schemas.codec import SchemaCatalog, load_schema_json

    cat = SchemaCatalog()
    cat.add(load_schema_json(v1), current=False)  # a historical writer schema
    cat.add(load_schema_json(evolved), current=True)
    old_record = {"session_id": "s", "station_id": "st", "connector_id": "c1", "reading_seq": 3,
                  "cumulative_import_wh": 1200, "cumulative_export_wh": 0, "read_at_ms": 5}
    fingerprint_v1 = load_schema_json(v1).fingerprint
    _, body = catalog().encode("chargemesh.session.v1.MeterReadingRecorded", old_record)
    name, decoded = cat.decode(fingerprint_v1, body)
    assert name == "chargemesh.session.v1.MeterReadingRecorded"
    assert decoded["meter_firmware"] == "unknown"
    assert decoded["cumulative_import_wh"] == 1200
    assert load_schema_json(evolved).fingerprint != fingerprint_v1


def test_garbage_is_a_decode_error_not_a_crash() -> None:
    for raw in (b"", b"\x00", b"\xc3\x01" + b"\x00" * 8, b"\xc3\x01" + bytes(200)):
        with pytest.raises(DecodeError):
            open_envelope(raw)


def test_the_sdk_publishes_every_type_to_the_topic_its_policy_accepts_it_on() -> None:
    from chargemesh.processors.policy import POLICIES
    from chargemesh.streams.sdk.participant import topic_for

    for event_type, policy in POLICIES.items():
        assert topic_for(event_type) == policy.topic, event_type
