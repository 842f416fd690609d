"""The SDK on the real stack: the README's walkthrough of one session, run as written, and what
the reader refuses to hand out."""

from __future__ import annotations

import re
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from chargemesh.infra.config import Settings
from chargemesh.streams.keys import Signer
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.sdk.participant import Participant, now_ms
from chargemesh.streams.sdk.publisher import Publisher
from chargemesh.streams.sdk.reader import BAD_SIGNATURE, NOT_FROM_PROCESSOR, Reader

from tests.conftest import Mesh

pytestmark = pytest.mark.integration
README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## One session through the SDK"
KEY_FILE_WAIT_S = 60.0
TOPIC_TIMEOUT_S = 30.0


def walkthrough_code() -> str:
    """The one Python block of the README's walkthrough section, exactly as printed there."""
    section = README.read_text(encoding="utf-8").split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, f"{len(blocks)} python blocks in the walkthrough"
    return str(blocks[0])


def processor_signer(settings: Settings) -> Signer:
    """The processors' key, as the running worker wrote it (created at its first start)."""
    deadline = time.monotonic() + KEY_FILE_WAIT_S
    while not settings.processor_key_path.is_file():
        assert time.monotonic() < deadline, "the worker wrote no processor key"
        time.sleep(0.2)
    return Signer.load(settings.processor_key_path)


def processor_keys(settings: Settings) -> dict[str, bytes]:
    signer = processor_signer(settings)
    return {signer.credential_id: signer.public_key}


def test_the_readme_walkthrough_settles_one_session_as_written(mesh: Mesh) -> None:
    namespace: dict[str, Any] = {
        "kafka_config": mesh.settings.kafka_client_config(),
        "authority": mesh.world.root,
        "issuer": mesh.world.issuer,
        "processor_keys": processor_keys(mesh.settings),
    }
    exec(compile(walkthrough_code(), f"{README}:walkthrough", "exec"), namespace)  # noqa: S102
    settlement = namespace["settlement"]
    station, vehicle = namespace["station"], namespace["vehicle"]
    assert settlement.final
    assert settlement.session_id == namespace["session_id"]
    # 20 kWh at 0.40 USD/kWh = 8.00, tax 8.25% = 0.66.
    assert settlement.total_amount == Decimal("8.66") and settlement.currency == "USD"
    assert [(ln["kind"], ln["amount"]) for ln in settlement.lines] == [
        ("ENERGY", Decimal("8.00")), ("TAX", Decimal("0.66"))]
    assert sum(ln["amount"] for ln in settlement.lines) == settlement.total_amount
    assert settlement.signer_ids == settlement.required_signer_ids == (
        station.credential_id, vehicle.credential_id)


def test_the_reader_hands_out_a_rejection_with_its_reason(mesh: Mesh) -> None:
    stranger = Participant.generate(f"ev-unknown-{uuid.uuid4().hex[:8]}")
    ident = sdk.identity(station_id="station-nowhere", vehicle=stranger, connector_id="c1",
                         rate_authority_id=mesh.world.root.credential_id, jurisdiction="US-CA")
    terms = sdk.claim(energy_wh=10_000, start_ms=now_ms(), stop_ms=now_ms() + 3_600_000,
                      ceiling_rate_per_kwh="0.50", currency="USD")
    order = sdk.order(stranger, "posted", order_id=f"o-{stranger.credential_id}", ident=ident,
                      terms=terms, rate_per_kwh="0.40", at_ms=now_ms())
    with Reader(mesh.settings.kafka_client_config(), processor_keys=processor_keys(mesh.settings),
                credential_ids=[stranger.credential_id], from_beginning=False) as reader:
        mesh.publish(order)
        rejection = reader.wait_for(lambda r: r.name == "EventRejected")
        assert rejection.event is None and rejection.payload["event_id"] == order.event_id
        assert rejection.reason_code == "UNKNOWN_CREDENTIAL"


def private_topic(settings: Settings) -> str:
    """A topic of this test's own, so forged records never reach the shared decisions topic."""
    name = f"sdk-reader-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(settings.kafka_client_config())
    futures = admin.create_topics([NewTopic(name, num_partitions=2, replication_factor=1)])
    futures[name].result(TOPIC_TIMEOUT_S)
    return name


def test_the_reader_refuses_records_not_signed_by_the_processors_key(mesh: Mesh) -> None:
    topic = private_topic(mesh.settings)
    processor = processor_signer(mesh.settings)
    impostor = Signer.generate(processor.credential_id)  # same id, another key
    vehicle_id = f"ev-{uuid.uuid4().hex[:8]}"

    def reserved(author: Signer, reservation_id: str, vehicle_credential_id: str) -> Any:
        payload = {"reservation_id": reservation_id, "order_id": f"o-{reservation_id}",
                   "vehicle_credential_id": vehicle_credential_id, "station_id": "station-x",
                   "connector_id": "c1", "slot_start_at_ms": 0, "slot_stop_at_ms": 900_000,
                   "rate_per_kwh": Decimal("0.400000"), "energy_wh": 10_000,
                   "rules_version": "r", "walk_up": False}
        return sdk.Participant(author, author.credential_id).sign(
            "chargemesh.ledger.v1.SlotReserved", payload, subject_key="station-x")

    genuine = reserved(processor, "res-genuine", vehicle_id)
    forged = reserved(impostor, "res-forged", vehicle_id)
    by_participant = reserved(Signer.generate("st-x"), "res-by-station", vehicle_id)
    someone_else = reserved(processor, "res-other", "ev-someone-else")
    publisher = Publisher(mesh.settings.kafka_client_config())
    for event in (forged, by_participant, someone_else, genuine, genuine):  # genuine twice
        publisher.publish(event, topic=topic)
    publisher.flush()
    with Reader(mesh.settings.kafka_client_config(), processor_keys={
            processor.credential_id: processor.public_key}, credential_ids=[vehicle_id],
            topic_names=[topic]) as reader:
        found = reader.wait_for(lambda r: r.payload["reservation_id"] == "res-genuine")
        assert found.event is not None and found.event.event_id == genuine.event_id
        reader.poll(1.0)  # the second copy of the genuine record, read and not handed out
        assert [r.payload["reservation_id"] for r in reader.received] == ["res-genuine"]
        assert sorted(r.reason_code for r in reader.refused) == [BAD_SIGNATURE,
                                                                 NOT_FROM_PROCESSOR]
