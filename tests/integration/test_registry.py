"""Confluent Schema Registry framing, the optional wire format (issue 3).

The registry here is ``chargemesh.infra.stack.registry_server`` (the REST subset the Confluent clients
use); the client side is confluent-kafka's own ``SchemaRegistryClient`` and, for the interop check,
its own ``AvroDeserializer``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from chargemesh.infra.config import Settings
from chargemesh.infra.stack.registry_server import RegistryServer
from chargemesh.infra.stack.worker import TopicReader, WorkerProcess, publisher, write_anchors
from chargemesh.infra.stack.embedded import EmbeddedStack
from chargemesh.schemas import registry
from chargemesh.schemas.framing import CONFLUENT_MAGIC, DecodeError, confluent_frame, normalise
from chargemesh.sinks.clickhouse_sink import ClickHouseSink
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.envelope import open_envelope
from chargemesh.streams.topics import DECISIONS, MARKET, REJECTIONS

from tests.conftest import Mesh
from tests.support.market import open_market
from tests.support.world import make_world


@pytest.fixture
def server() -> Iterator[RegistryServer]:
    srv = RegistryServer("127.0.0.1", 0).start_background()
    previous = registry.installed()
    try:
        yield srv
    finally:
        registry.install(previous)
        srv.stop()


def test_framed_event_decodes_with_the_registry_and_confluents_own_deserializer(
        server: RegistryServer) -> None:
    framing = registry.SchemaRegistryFraming(server.url)
    registry.install(framing)
    world = make_world()
    event = sdk.heartbeat(world.root, at_ms=1_700_000_000_000)
    single = event.encode()
    framed = framing.frame(MARKET.name, single)

    assert framed[:1] == CONFLUENT_MAGIC and framed[5:] == single[10:]
    assert normalise(framed) == single
    reopened = open_envelope(framed)
    assert reopened.event_id == event.event_id
    assert reopened.verify_by(world.root.credential_id, world.root.public_key)

    client = SchemaRegistryClient({"url": server.url})
    assert f"{MARKET.name}-value" in client.get_subjects()
    decoded = AvroDeserializer(client)(framed, SerializationContext(MARKET.name,
                                                                    MessageField.VALUE))
    assert decoded["body"]["event_id"] == event.event_id
    assert decoded["signatures"][0]["signer_credential_id"] == world.root.credential_id
    # Registering again (another producer) gives the same id.
    assert registry.SchemaRegistryFraming(server.url).frame(MARKET.name, single) == framed


def test_unknown_or_foreign_schema_ids_are_refused(server: RegistryServer) -> None:
    framing = registry.SchemaRegistryFraming(server.url)
    registry.install(framing)
    with pytest.raises(DecodeError) as unknown:
        normalise(confluent_frame(999, b"\x02"))
    assert unknown.value.reason_code == "UNKNOWN_SCHEMA"

    foreign = {"type": "record", "name": "Foreign", "namespace": "elsewhere",
               "fields": [{"name": "x", "type": "long"}]}
    foreign_id = SchemaRegistryClient({"url": server.url}).register_schema(
        "other-value", Schema(json.dumps(foreign), "AVRO"))
    with pytest.raises(DecodeError) as refused:
        open_envelope(confluent_frame(foreign_id, b"\x02"))
    assert refused.value.reason_code == "UNKNOWN_SCHEMA"
    assert "not a packaged chargemesh schema" in refused.value.detail

    registry.install(None)
    with pytest.raises(DecodeError) as unconfigured:
        open_envelope(confluent_frame(1, b"\x02"))
    assert "no schema registry is configured" in unconfigured.value.detail


@pytest.mark.integration
def test_processors_and_sink_run_on_confluent_framing(
        server: RegistryServer, new_stack_settings: Callable[[], Settings]) -> None:
    """With a registry URL set, producers frame the Confluent way, the worker admits and decides
    on framed input and frames its outputs, and the ClickHouse archive keeps single-object bytes
    (readable with the .avsc files alone)."""
    settings = new_stack_settings().with_overrides(schema_registry_url=server.url)
    stack = EmbeddedStack(settings)
    stack.up()
    worker = None
    stop = threading.Event()
    sink = ClickHouseSink(settings, group_id="registry-test-sink")
    sink_thread = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    try:
        world = make_world()
        world.deploy_identity(settings)
        write_anchors(settings, world.root)
        worker = WorkerProcess(settings, index=0, loglevel="info").start()
        sink_thread.start()
        mesh = Mesh(settings, world, worker)
        mesh.publish(*world.governance)
        world.governance.clear()
        t = sdk.now_ms()
        market = open_market(mesh, "reg", t, [sdk.connector("c1", 50_000)], hours=4)
        vehicle = market.vehicle("v1")
        mesh.publish(*world.governance)
        world.governance.clear()
        order = market.posted_order(vehicle, "o1", market.start_ms, connector_id="c1")
        mesh.publish(order)
        forged_id = confluent_frame(4242, order.encode()[10:])
        pub = publisher(settings)
        pub.publish_raw(MARKET.name, market.station_id, forged_id)
        pub.flush()

        decisions = TopicReader(settings, DECISIONS.name)
        records = decisions.wait_for(
            lambda rs: any(r.event().event_type.endswith("SlotReserved") for r in rs),
            timeout_s=60, workers=(worker,))
        decisions.close()
        assert all(r.value[:1] == CONFLUENT_MAGIC for r in records), "outputs are framed"
        reserved = [r.event() for r in records if r.event().event_type.endswith("SlotReserved")]
        assert reserved[0].body.prev_hash == order.event_hash

        rejections = TopicReader(settings, REJECTIONS.name)
        rejected = rejections.wait_for(lambda rs: len(rs) >= 1, timeout_s=60, workers=(worker,))
        rejections.close()
        assert rejected[0].value[:1] == CONFLUENT_MAGIC
        assert rejected[0].rejection()["reason_code"] == "UNKNOWN_SCHEMA"

        rows = mesh.wait_rows("SELECT substring(envelope_bytes, 1, 2), event_type FROM events "
                              "WHERE event_id = %(id)s", {"id": order.event_id})
        assert rows[0][0] == b"\xc3\x01", "the archive holds single-object bytes"
    finally:
        stop.set()
        if sink_thread.is_alive():
            sink_thread.join(30)
        sink.close()
        if worker is not None:
            worker.stop()
        stack.down()
