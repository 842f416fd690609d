"""What the processors decide for a batch: records plus state in, outputs plus state writes out.

Pure and synchronous: no Kafka client, no ClickHouse, no clock, no environment. The Faust agents
(``processors/runtime/app.py``), the benchmark's plain confluent-kafka loop and the broker-free
tests all call these functions; the callers only move data (read the records and the state,
publish the outputs, then write the state).

Every input is verified first (:func:`verify`, pure, so a caller may run it in a pool and retry a
refusal that only means its trust view lags, :func:`stale_view`), then one batch function per
input topic applies the verdicts in order:

- :func:`market_batch`: one single-writer ledger per station (``ledger.step.market_step``);
  a ``RevocationRouted`` record reaches every station of its partition;
- :func:`grid_batch`: one router per grid zone (``grid.zone_router``);
- :func:`governance_batch`: the admitted copies of governance events, and the revocation
  fan-out (``ledger.revocation.fan_out``).

Every output has a deterministic id and bytes (decisions: UUIDv5 of the causing event and an
index; rejections: of topic/partition/offset), so a batch redone after a crash republishes the
same records, which consumers collapse by id. The one value that is not derived from the inputs
is the rejection records' ``rejected_at_ms``: the batch's wall time, passed in by the caller.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TypeAlias

from chargemesh.checks import ensure
from chargemesh.processors.decisions import Decision
from chargemesh.processors.governance import TrustStore
from chargemesh.processors.grid import zone_router
from chargemesh.processors.ingress import Admitted, Refused, admit, rejection_record
from chargemesh.processors.ledger import revocation
from chargemesh.processors.ledger import state as ledger
from chargemesh.processors.ledger.step import Step, grid_replay, market_step
from chargemesh.processors.reasons import Reason, Rejection
from chargemesh.processors.records import (
    Output,
    Record,
    StateWrite,
    decision_id,
    expected_partition,
)
from chargemesh.schemas.codec import catalog
from chargemesh.streams import topics
from chargemesh.streams.envelope import REJECTED_SCHEMA, SignedEvent, seal
from chargemesh.streams.keys import Signer

log = logging.getLogger(__name__)

Verdict: TypeAlias = Admitted | Refused
# A refusal for one of these may only mean the caller's trust view lags: catch up, retry once.
STALE_VIEW_REASONS = frozenset({
    Reason.UNKNOWN_CREDENTIAL.value, Reason.UNRECOGNISED_AUTHORITY.value,
})
CALENDAR_PUBLISHED = "chargemesh.capacity.v1.SlotCalendarPublished"
ERROR_DETAIL_CHARS_MAX = 500


@dataclasses.dataclass(frozen=True)
class BatchContext:
    """What a batch reads besides its records and state: the trust view (only read), the
    processor's signing key, the deployment's partition count, and the batch's wall time (used
    for nothing but the rejection records' ``rejected_at_ms``)."""

    store: TrustStore
    signer: Signer
    partitions: int
    now_ms: int


@dataclasses.dataclass
class BatchResult:
    """Publish ``outputs`` (acknowledged) first, then write ``state_writes``: a committed input
    offset then always has its outputs and its state on the broker. ``ledgers``: each station
    ledger written, as (the value written, that state decoded), for a caller's decode cache."""

    outputs: list[Output] = dataclasses.field(default_factory=list)
    state_writes: list[StateWrite] = dataclasses.field(default_factory=list)
    ledgers: dict[str, tuple[bytes, ledger.LedgerState]] = dataclasses.field(
        default_factory=dict)


# ---- verification and the records every batch writes -------------------------------------------


def verify(record: Record, store: TrustStore) -> Verdict:
    """Decode ``record`` and check it against its topic's policy and the trust store."""
    return admit(record.value, record.key, record.topic, store)


def stale_view(verdict: Verdict) -> bool:
    """A refusal that a trust view caught up with the governance topic might not repeat."""
    return isinstance(verdict, Refused) and verdict.rejection.reason in STALE_VIEW_REASONS


def admitted_output(record: Record) -> Output:
    """The lineage copy of an admitted input: its bytes unchanged, its source in headers."""
    headers = (("source_topic", record.topic.encode()),
               ("source_partition", str(record.partition).encode()),
               ("source_offset", str(record.offset).encode()))
    return Output(topics.ADMITTED.name, record.key or b"", record.value, headers)


def rejected_output(record: Record, refused: Refused, now_ms: int) -> Output:
    """The ``EventRejected`` record of a refused input, keyed by its source topic."""
    value = catalog().single_object_encode(REJECTED_SCHEMA, rejection_record(
        record.value, record.topic, record.partition, record.offset, refused, now_ms))
    return Output(topics.REJECTIONS.name, record.topic.encode(), value)


def seal_decision(signer: Signer, state: ledger.LedgerState, cause: SignedEvent, index: int,
                  decision: Decision, scope: str = "") -> SignedEvent:
    """A ledger decision as a signed event: deterministic id, time and bytes (Ed25519 is).

    ``scope`` (the station) keeps ids distinct when one cause reaches many stations."""
    wire = dict(decision.payload)
    at_ms = state.clock_ms if decision.at_ms is None else decision.at_ms
    return seal(decision.event_type, wire, author=signer, subject_key=decision.key,
                occurred_at_ms=at_ms,
                chain_id=(wire.get("session_id") or wire.get("reservation_id")
                          or wire.get("order_id", "")),
                prev_hash=cause.event_hash,
                event_id=decision_id(f"{cause.event_id}@{scope}" if scope else cause.event_id,
                                     index))


def decision_output(signer: Signer, state: ledger.LedgerState, cause: SignedEvent, index: int,
                    decision: Decision, scope: str = "") -> Output:
    sealed = seal_decision(signer, state, cause, index, decision, scope)
    return Output(decision.topic, decision.key.encode(), sealed.encode())


# ---- the market: one single-writer ledger per station --------------------------------------------


@dataclasses.dataclass
class MarketTables:
    """The market's state as read: each station's ledger (JSON), where each event id was first
    seen ("partition:offset"), and optionally ledgers already decoded (station -> (the table
    value they were decoded from or encoded to, that state)). A decoded ledger is used only
    while the table still holds that very bytes object, and batches update it in place: a
    caller keeping ``decoded`` across batches must stop rather than go on after a failed one."""

    station_to_ledger: Mapping[bytes, bytes]
    event_id_to_position: Mapping[bytes, bytes]
    decoded: Mapping[str, tuple[bytes, ledger.LedgerState]] = dataclasses.field(
        default_factory=dict)

    def load(self, station: str) -> tuple[ledger.LedgerState, bytes | None]:
        """The station's ledger and the table value it comes from (None: a new ledger)."""
        raw = self.station_to_ledger.get(station.encode())
        cached = self.decoded.get(station)
        if raw and cached is not None and cached[0] is raw:
            return cached[1], raw
        return (ledger.load_state(raw) if raw else ledger.LedgerState(station)), raw

    def position_of(self, event_id: str) -> str | None:
        raw = self.event_id_to_position.get(event_id.encode())
        return raw.decode() if raw else None

    def stations(self) -> Iterable[str]:
        return (key.decode() for key in self.station_to_ledger)


@dataclasses.dataclass
class StationBatch:
    """A station's state during one batch, and how to rebuild it if a step blows up."""

    state: ledger.LedgerState
    loaded: bytes | None  # the table value at batch start
    partition: int
    steps: list[tuple[Admitted, int, int, str | None]] = dataclasses.field(
        default_factory=list)


@dataclasses.dataclass
class _Market:
    """One market batch in progress."""

    tables: MarketTables
    context: BatchContext
    touched: dict[str, StationBatch] = dataclasses.field(default_factory=dict)
    first_seen: dict[str, str] = dataclasses.field(default_factory=dict)
    outputs: list[Output] = dataclasses.field(default_factory=list)


def guarded_step(batch: StationBatch, verdict: Admitted, partition: int, offset: int,
                 seen: str | None, view: ledger.GovernanceView) -> Step:
    """``market_step``, with a bug in it turned into a rejection instead of a crash loop.

    A step that raises may have half-changed the state: the station is rebuilt from its value at
    batch start plus the steps before this one (deterministic), then the event is rejected.
    """
    try:
        step = market_step(batch.state, verdict, partition, offset, seen, view)
    except Exception as exc:  # one poisoned event must not stop the station
        log.exception("market step failed for %s", verdict.event.event_id)
        state = ledger.load_state(batch.loaded) if batch.loaded else ledger.LedgerState(
            batch.state.station_id)
        for args in batch.steps:
            market_step(state, *args, view)
        state.applied_through_offset = offset
        batch.state.__dict__.update(state.__dict__)
        return Step(applied=True, rejection=Rejection.of(
            Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"[:ERROR_DETAIL_CHARS_MAX]))
    batch.steps.append((verdict, partition, offset, seen))
    return step


def market_batch(records: Sequence[Record], verdicts: Sequence[Verdict], tables: MarketTables,
                 context: BatchContext) -> BatchResult:
    """Apply a batch of market records (with their verdicts, in order) to the station ledgers.

    An admitted event on another partition than its key's is refused KEY_MISMATCH; a
    ``RevocationRouted`` reaches every station of its partition (restored or touched so far)."""
    ensure(len(records) == len(verdicts), "one verdict per record")
    market = _Market(tables, context)
    for record, verdict in zip(records, verdicts):
        if isinstance(verdict, Admitted) and record.partition != expected_partition(
                record.key or b"", context.partitions):
            verdict = Refused(Rejection.of(Reason.KEY_MISMATCH, "not on the key's partition"),
                              verdict.event)
        if isinstance(verdict, Refused):
            market.outputs.append(rejected_output(record, verdict, context.now_ms))
            continue
        if verdict.event.event_type == revocation.REVOCATION_ROUTED:
            for station in _stations_on(market, record.partition):
                _station_step(market, station, verdict, record, scoped=True)
        else:
            _station_step(market, verdict.event.body.subject_key, verdict, record, scoped=False)
    return _market_result(market)


def _stations_on(market: _Market, partition: int) -> list[str]:
    """Every station with a ledger on ``partition`` (restored or touched in this batch)."""
    known = set(market.tables.stations()) | set(market.touched)
    partitions = market.context.partitions
    return sorted(s for s in known if expected_partition(s.encode(), partitions) == partition)


def _station_step(market: _Market, station: str, verdict: Admitted, record: Record,
                  scoped: bool) -> None:
    """One admitted market event applied to one station's ledger; its outputs."""
    context, outputs = market.context, market.outputs
    batch_of = market.touched.get(station)
    if batch_of is None:
        state, raw = market.tables.load(station)
        batch_of = market.touched[station] = StationBatch(state, raw, record.partition)
    event_id = verdict.event.event_id
    seen = market.first_seen.get(event_id) or market.tables.position_of(event_id)
    step = guarded_step(batch_of, verdict, record.partition, record.offset, seen, context.store)
    if not step.applied:
        return  # applied before a restart; its outputs were acknowledged then
    if step.admitted and not step.replay and event_id not in market.first_seen:
        market.first_seen[event_id] = f"{record.partition}:{record.offset}"
        outputs.append(admitted_output(record))
    scope = station if scoped else ""
    outputs.extend(decision_output(context.signer, batch_of.state, verdict.event, i, d, scope)
                   for i, d in enumerate(step.decisions))
    if verdict.event.event_type == CALENDAR_PUBLISHED and step.rejection is None:
        outputs.append(zone_router.zone_joined(batch_of.state, verdict.event, context.signer))
    if step.rejection is not None:
        outputs.append(rejected_output(record, Refused(step.rejection, verdict.event),
                                       context.now_ms))


def _market_result(market: _Market) -> BatchResult:
    """The batch's outputs, then each touched ledger and each first-seen position as writes."""
    result = BatchResult(outputs=market.outputs)
    for station, batch_of in market.touched.items():
        value = ledger.dump_state(batch_of.state)
        result.ledgers[station] = (value, batch_of.state)
        result.state_writes.append(StateWrite(topics.STATION_LEDGER_STATE.name,
                                              station.encode(), batch_of.partition, value))
    for event_id, position in market.first_seen.items():
        result.state_writes.append(StateWrite(topics.EVENT_POSITION_STATE.name,
                                              event_id.encode(), int(position.split(":")[0]),
                                              position.encode()))
    return result


# ---- the grid: one router per zone ---------------------------------------------------------------


def grid_batch(records: Sequence[Record], verdicts: Sequence[Verdict],
               zone_to_stations: Mapping[bytes, bytes], context: BatchContext) -> BatchResult:
    """Zone membership and grid events; each grid event is routed to the zone's stations."""
    ensure(len(records) == len(verdicts), "one verdict per record")
    result = BatchResult()
    zones: dict[str, zone_router.ZoneState] = {}
    for record, verdict in zip(records, verdicts):
        if isinstance(verdict, Admitted):
            zone = verdict.event.body.subject_key
            zstate = zones.get(zone) or zone_router.load_zone(zone_to_stations.get(zone.encode()))
            zones[zone] = zstate
            if record.offset <= zstate["applied_through_offset"]:
                continue  # applied before a restart
            zstate["applied_through_offset"] = record.offset
            replayed = grid_replay(zstate, verdict.event)
            if replayed:
                verdict = Refused(replayed, verdict.event)
            else:
                verdict, routed = zone_router.route(zstate, verdict, context.store,
                                                    context.signer)
                result.outputs.extend(routed)
        if isinstance(verdict, Refused):
            result.outputs.append(rejected_output(record, verdict, context.now_ms))
        else:
            result.outputs.append(admitted_output(record))
    result.state_writes = [
        StateWrite(topics.ZONE_STATIONS_STATE.name, zone.encode(),
                   expected_partition(zone.encode(), context.partitions),
                   zone_router.dump_zone(zstate))
        for zone, zstate in zones.items()]
    return result


# ---- governance: lineage copies and the revocation fan-out --------------------------------------


def governance_batch(records: Sequence[Record], verdicts: Sequence[Verdict | None],
                     context: BatchContext) -> BatchResult:
    """The outputs of governance records whose verdicts the caller's trust view already took
    (it applies the governance topic in order itself); a record without one (None: too old for
    the view to keep) has no outputs. Governance has no state of its own here."""
    ensure(len(records) == len(verdicts), "one verdict per record")
    result = BatchResult()
    for record, verdict in zip(records, verdicts):
        if verdict is None:
            continue
        if isinstance(verdict, Refused):
            result.outputs.append(rejected_output(record, verdict, context.now_ms))
            continue
        result.outputs.append(admitted_output(record))
        if verdict.event.event_type == revocation.CREDENTIAL_REVOKED:
            result.outputs.extend(revocation.fan_out(verdict.event, verdict.payload,
                                                     context.store, context.signer,
                                                     context.partitions))
    return result
