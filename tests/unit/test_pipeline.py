"""The processors' pipeline without a broker: records built by the SDK go in, outputs and state
writes come out, exactly as the Faust agents and the benchmark's plain loop get them.

A station publishes its calendar and takes an order; the same order replayed at another offset
is refused; a grid operator's event reaches every station of its zone through the zone router;
a revocation fans out to every market partition and reaches the station holding the revoked
vehicle's booking; and the same batch twice gives the same bytes.
"""

from __future__ import annotations

import dataclasses
import os
import random
from typing import Any

from aiokafka.partitioner import murmur2 as java_client_murmur2
from chargemesh.processors import pipeline
from chargemesh.processors.governance import TrustAnchor, TrustStore
from chargemesh.processors.ingress import Admitted, admit_governance
from chargemesh.processors.ledger import state as ledger
from chargemesh.processors.records import (
    Output,
    Record,
    StateWrite,
    decision_id,
    expected_partition,
    murmur2,
)
from chargemesh.schemas.codec import catalog
from chargemesh.streams import topics
from chargemesh.streams.envelope import SignedEvent, open_envelope, open_payload
from chargemesh.streams.keys import Signer
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.sdk.participant import Participant, topic_for
from chargemesh.units import HOUR_MS, MINUTE_MS

from tests.support.world import T0_MS, World, make_world

PARTITIONS = 4
SLOT_MS = 15 * MINUTE_MS
ZONE = "zone-pipe"
STATIONS = ("pipe-station-a", "pipe-station-b")
TARIFF, RULES = "pipe-tariff", "pipe-rules"
AUTHORITY = "auth-root"  # make_world's root: the rate authority that filed the tariff
START_MS = T0_MS + 24 * HOUR_MS
NOW_MS = T0_MS + HOUR_MS  # the batches' wall time (only rejection records carry it)
PROCESSOR_ID = "mesh:processor"
SLOT_RESERVED = "chargemesh.ledger.v1.SlotReserved"
ZONE_JOINED = "chargemesh.grid.v1.StationZoneJoined"


@dataclasses.dataclass
class Mesh:
    """A credentialed world, a processor key, and the state tables a worker would hold."""

    world: World
    store: TrustStore
    processor: Signer
    stations: dict[str, Participant]
    vehicle: Participant
    operator: Participant
    tables: dict[str, dict[bytes, bytes]] = dataclasses.field(default_factory=lambda: {
        topics.STATION_LEDGER_STATE.name: {}, topics.EVENT_POSITION_STATE.name: {},
        topics.ZONE_STATIONS_STATE.name: {}})
    next_offset: dict[tuple[str, int], int] = dataclasses.field(default_factory=dict)

    def context(self) -> pipeline.BatchContext:
        return pipeline.BatchContext(self.store, self.processor, PARTITIONS, NOW_MS)

    def record(self, event: SignedEvent | Output, offset: int | None = None) -> Record:
        """The record a consumer reads once ``event`` is published on its key's partition."""
        if isinstance(event, Output):
            topic, key, value = event.topic, event.key, event.value
        else:
            topic, key = topic_for(event.event_type), event.body.subject_key.encode()
            value = event.encode()
        partition = expected_partition(key, PARTITIONS)
        if offset is None:
            offset = self.next_offset.get((topic, partition), 0)
        self.next_offset[(topic, partition)] = offset + 1
        return Record(topic, partition, offset, key, value)

    def market(self, records: list[Record]) -> pipeline.BatchResult:
        verdicts = [pipeline.verify(r, self.store) for r in records]
        tables = pipeline.MarketTables(self.tables[topics.STATION_LEDGER_STATE.name],
                                       self.tables[topics.EVENT_POSITION_STATE.name])
        return self.persist(pipeline.market_batch(records, verdicts, tables, self.context()))

    def grid(self, records: list[Record]) -> pipeline.BatchResult:
        verdicts = [pipeline.verify(r, self.store) for r in records]
        return self.persist(pipeline.grid_batch(
            records, verdicts, self.tables[topics.ZONE_STATIONS_STATE.name], self.context()))

    def governance(self, events: list[SignedEvent]) -> pipeline.BatchResult:
        """The follower's part (apply each event to the trust store), then the pipeline's."""
        records = [self.record(e) for e in events]
        verdicts: list[pipeline.Verdict | None] = [
            admit_governance(r.value, r.key, self.store) for r in records]
        return pipeline.governance_batch(records, verdicts, self.context())

    def persist(self, result: pipeline.BatchResult) -> pipeline.BatchResult:
        for write in result.state_writes:
            self.tables[write.topic][write.key] = write.value
        return result


def make_mesh() -> Mesh:
    world = make_world()
    stations = {s: world.credential(f"{s}-cred", ["STATION"], subject_id=s) for s in STATIONS}
    vehicle = world.credential("pipe-ev-cred", ["VEHICLE"], subject_id="pipe-ev")
    operator = world.grid_operator("pipe-op", ZONE, subject_id="pipe-op")
    world.governance += [
        sdk.tariff_filed(world.root, tariff_id=TARIFF, jurisdiction="US-CA", currency="USD",
                         ceiling_per_kwh="0.80", at_ms=T0_MS),
        sdk.rules_published(world.root, rules_version=RULES, jurisdiction="US-CA", at_ms=T0_MS),
        sdk.grid_program(operator, grid_zone_id=ZONE, program="DEMAND_RESPONSE",
                         operator_ids=[operator.credential_id], at_ms=T0_MS),
    ]
    processor = world.processor_credential(PROCESSOR_ID).signer
    store = TrustStore(world.anchors())
    for event in world.governance:
        verdict = admit_governance(event.encode(), event.body.subject_key.encode(), store)
        assert isinstance(verdict, Admitted), verdict
    return Mesh(world, store, processor, stations, vehicle, operator)


def calendar(station: Participant) -> SignedEvent:
    return sdk.calendar_published(
        station, rate_authority_id=AUTHORITY, jurisdiction="US-CA", tariff_id=TARIFF,
        rules_version=RULES, connectors=[sdk.connector("c1", 150_000)], slot_duration_ms=SLOT_MS,
        horizon_start_ms=START_MS, horizon_end_ms=START_MS + 24 * HOUR_MS,
        posted_rate_per_kwh="0.40", currency="USD", grid_zone_id=ZONE, at_ms=T0_MS + 1)


def posted_order(mesh: Mesh, station: str, order_id: str, slot: int = 0) -> SignedEvent:
    """A posted-price order for two slots of connector c1 from slot ``slot`` of the horizon."""
    start_ms = START_MS + slot * SLOT_MS
    ident = sdk.identity(station_id=station, vehicle=mesh.vehicle,
                         rate_authority_id=AUTHORITY, jurisdiction="US-CA",
                         connector_id="c1")
    terms = sdk.claim(energy_wh=10_000, start_ms=start_ms, stop_ms=start_ms + 2 * SLOT_MS,
                      ceiling_rate_per_kwh="0.90", currency="USD")
    return sdk.order(mesh.vehicle, "posted", order_id=order_id, ident=ident, terms=terms,
                     rate_per_kwh="0.40", at_ms=T0_MS + 2)


def opened(output: Output) -> tuple[SignedEvent, dict[str, Any]]:
    event = open_envelope(output.value)
    return event, open_payload(event)


def of_type(outputs: list[Output], event_type: str) -> list[tuple[SignedEvent, dict[str, Any]]]:
    signed = [opened(o) for o in outputs if o.topic != topics.REJECTIONS.name]
    return [(e, p) for e, p in signed if e.event_type == event_type]


def rejections(outputs: list[Output]) -> list[dict[str, Any]]:
    return [catalog().single_object_decode(o.value)[1] for o in outputs
            if o.topic == topics.REJECTIONS.name]


def writes_to(result: pipeline.BatchResult, topic: str) -> list[StateWrite]:
    return [w for w in result.state_writes if w.topic == topic]


# ---- the stories ----------------------------------------------------------------------------------


def test_an_order_is_reserved_and_the_ledger_written() -> None:
    mesh = make_mesh()
    station = STATIONS[0]
    cal, order = calendar(mesh.stations[station]), posted_order(mesh, station, "pipe-o1")
    result = mesh.market([mesh.record(cal), mesh.record(order)])

    assert rejections(result.outputs) == []
    [(reserved, payload)] = of_type(result.outputs, SLOT_RESERVED)
    assert payload["order_id"] == "pipe-o1" and payload["station_id"] == station
    assert reserved.event_id == decision_id(order.event_id, 0)
    assert reserved.body.author_credential_id == PROCESSOR_ID
    assert reserved.body.prev_hash == order.event_hash  # linked to the order that caused it
    decision_out = next(o for o in result.outputs if o.value == reserved.encode())
    assert (decision_out.topic, decision_out.key) == (topics.DECISIONS.name, station.encode())
    # both inputs copied to the lineage log with their source position
    admitted = [o for o in result.outputs if o.topic == topics.ADMITTED.name]
    assert [o.value for o in admitted] == [cal.encode(), order.encode()]
    assert dict(admitted[1].headers)["source_offset"] == b"1"
    # the calendar tells the zone's router the station joined
    [(_, joined_payload)] = of_type(result.outputs, ZONE_JOINED)
    assert joined_payload == {"station_id": station, "grid_zone_id": ZONE,
                              "calendar_version": 1}

    [ledger_write] = writes_to(result, topics.STATION_LEDGER_STATE.name)
    partition = expected_partition(station.encode(), PARTITIONS)
    assert (ledger_write.key, ledger_write.partition) == (station.encode(), partition)
    state = ledger.load_state(ledger_write.value)
    assert state.applied_through_offset == 1
    assert [r.order_id for r in state.reservations.values()] == ["pipe-o1"]
    positions = {w.key: w.value for w in writes_to(result, topics.EVENT_POSITION_STATE.name)}
    assert positions == {cal.event_id.encode(): f"{partition}:0".encode(),
                         order.event_id.encode(): f"{partition}:1".encode()}
    assert result.ledgers[station][0] is ledger_write.value


def test_a_replayed_event_id_is_refused_and_a_redelivery_changes_nothing() -> None:
    mesh = make_mesh()
    station = STATIONS[0]
    order = posted_order(mesh, station, "pipe-o1")
    first = mesh.record(order, offset=1)
    mesh.market([mesh.record(calendar(mesh.stations[station]), offset=0), first])

    redelivered = mesh.market([first])  # the same position again: applied before a restart
    assert redelivered.outputs == []

    replay = mesh.market([mesh.record(order, offset=7)])  # the same event id elsewhere
    [refusal] = rejections(replay.outputs)
    assert refusal["reason_code"] == "REPLAYED_EVENT_ID"
    assert refusal["event_id"] == order.event_id and refusal["source_offset"] == 7
    assert refusal["rejected_at_ms"] == NOW_MS
    assert of_type(replay.outputs, SLOT_RESERVED) == []
    assert not [o for o in replay.outputs if o.topic == topics.ADMITTED.name]
    # the refusal is recorded in the ledger (offset applied), the first position kept
    assert writes_to(replay, topics.EVENT_POSITION_STATE.name) == []


def test_an_event_on_another_partition_than_its_key_is_refused() -> None:
    mesh = make_mesh()
    cal = calendar(mesh.stations[STATIONS[0]])
    right = mesh.record(cal)
    wrong = dataclasses.replace(right, partition=(right.partition + 1) % PARTITIONS)
    result = mesh.market([wrong])
    assert [r["reason_code"] for r in rejections(result.outputs)] == ["KEY_MISMATCH"]
    assert result.state_writes == []


def test_a_grid_event_is_routed_to_every_station_of_its_zone() -> None:
    mesh = make_mesh()
    joins = []
    for station in STATIONS:
        market = mesh.market([mesh.record(calendar(mesh.stations[station]))])
        joins += [o for o in market.outputs if o.topic == topics.GRID.name]
    assert len(joins) == len(STATIONS)
    joined = mesh.grid([mesh.record(o) for o in joins])
    assert rejections(joined.outputs) == []
    [zone_write] = joined.state_writes
    assert zone_write.partition == expected_partition(ZONE.encode(), PARTITIONS)

    event = sdk.grid_event(mesh.operator, grid_event_id="pipe-ge-1", grid_zone_id=ZONE,
                           kind="PRICE_SIGNAL", from_ms=START_MS, until_ms=START_MS + HOUR_MS,
                           rate_per_kwh="0.55", at_ms=T0_MS + 3)
    routed = mesh.grid([mesh.record(event)])
    copies = [o for o in routed.outputs if o.topic == topics.MARKET.name]
    assert sorted(o.key.decode() for o in copies) == sorted(STATIONS)
    for output in copies:
        sealed, payload = opened(output)
        assert sealed.event_type == "chargemesh.grid.v1.GridEventRouted"
        assert payload["grid_event"] == event.encode()
        assert payload["station_id"] == sealed.body.subject_key
        # the routed copy is a valid market record on its station's partition
        assert isinstance(pipeline.verify(mesh.record(output), mesh.store), Admitted)
    assert [o.value for o in routed.outputs if o.topic == topics.ADMITTED.name] == [
        event.encode()]

    again = mesh.grid([mesh.record(event)])
    assert [r["reason_code"] for r in rejections(again.outputs)] == ["REPLAYED_EVENT_ID"]
    assert not [o for o in again.outputs if o.topic == topics.MARKET.name]


def test_a_revocation_fans_out_to_every_partition_and_cancels_the_booking() -> None:
    mesh = make_mesh()
    station = STATIONS[0]
    mesh.market([mesh.record(calendar(mesh.stations[station])),
                 mesh.record(posted_order(mesh, station, "pipe-o1"))])
    revoke = mesh.world.issuer.revoke(mesh.vehicle.credential_id, effective_at_ms=T0_MS + 10,
                                      at_ms=T0_MS + 10)
    fanned = mesh.governance([revoke])
    assert [o.value for o in fanned.outputs if o.topic == topics.ADMITTED.name] == [
        revoke.encode()]
    routed = [o for o in fanned.outputs if o.topic == topics.MARKET.name]
    assert [expected_partition(o.key, PARTITIONS) for o in routed] == list(range(PARTITIONS))
    assert [opened(o)[0].event_id for o in routed] == [
        decision_id(revoke.event_id, p) for p in range(PARTITIONS)]

    reached = mesh.market([mesh.record(o) for o in routed])
    released = of_type(reached.outputs, "chargemesh.ledger.v1.SlotReleased")
    assert [p["reason_code"] for _, p in released] == ["CREDENTIAL_REVOKED"]
    outcomes = [p["outcome"] for _, p in
                of_type(reached.outputs, "chargemesh.ledger.v1.CredentialReevaluated")]
    assert outcomes == ["CANCELLED"]


def test_the_same_batch_twice_gives_the_same_bytes() -> None:
    signing = make_mesh()  # SDK event ids are random: sign once, feed two fresh pipelines
    station = STATIONS[0]
    order = posted_order(signing, station, "pipe-o1")
    events = [calendar(signing.stations[station]), order, order,
              posted_order(signing, station, "pipe-o2", slot=2)]

    def run() -> tuple[list[Output], list[StateWrite]]:
        mesh = make_mesh()
        result = mesh.market([mesh.record(e) for e in events])
        return result.outputs, result.state_writes

    first, second = run(), run()
    assert first == second
    assert len(of_type(first[0], SLOT_RESERVED)) == 2
    assert [r["reason_code"] for r in rejections(first[0])] == ["REPLAYED_EVENT_ID"]


# ---- partitioning ---------------------------------------------------------------------------------


def test_murmur2_is_the_java_clients() -> None:
    rng = random.Random(7)
    keys = [os.urandom(rng.randrange(0, 48)) for _ in range(2_000)]
    keys += [s.encode() for s in STATIONS] + [b"", b"a", b"ab", b"abc", b"abcd"]
    assert [murmur2(k) for k in keys] == [java_client_murmur2(k) for k in keys]


def test_a_station_joining_after_a_grid_event_still_receives_it_while_it_is_in_force() -> None:
    """The operator's signal and a station's calendar race to the zone (the join is the
    processors' own answer to the calendar): a station that joins while an event is in force
    gets it routed then, once, with an id derived from its join."""
    mesh = make_mesh()
    first, late = STATIONS[0], STATIONS[1]
    joins = [o for o in mesh.market([mesh.record(calendar(mesh.stations[first]))]).outputs
             if o.topic == topics.GRID.name]
    mesh.grid([mesh.record(o) for o in joins])
    event = sdk.grid_event(mesh.operator, grid_event_id="pipe-ge-late", grid_zone_id=ZONE,
                           kind="PRICE_SIGNAL", from_ms=START_MS, until_ms=START_MS + HOUR_MS,
                           rate_per_kwh="0.55", at_ms=T0_MS + 3)
    routed = mesh.grid([mesh.record(event)])
    assert [o.key.decode() for o in routed.outputs if o.topic == topics.MARKET.name] == [first]

    late_joins = [o for o in mesh.market([mesh.record(calendar(mesh.stations[late]))]).outputs
                  if o.topic == topics.GRID.name]
    joined = mesh.grid([mesh.record(o) for o in late_joins])
    copies = [o for o in joined.outputs if o.topic == topics.MARKET.name]
    assert [o.key.decode() for o in copies] == [late]
    sealed, payload = opened(copies[0])
    assert payload["grid_event"] == event.encode() and payload["station_id"] == late
    assert isinstance(pipeline.verify(mesh.record(copies[0]), mesh.store), Admitted)
    # a station already in the zone (a new calendar version, a redelivered join) gets nothing
    again = mesh.grid([mesh.record(o) for o in late_joins])
    assert not [o for o in again.outputs if o.topic == topics.MARKET.name]
