"""``chargemesh events tail TOPIC``: the records of a topic, decoded."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import click
from chargemesh.checks import ensure
from chargemesh.infra.cli.errors import ChargemeshGroup, OpsError
from chargemesh.infra.cli.root import settings_of
from chargemesh.infra.config import Settings
from chargemesh.infra.stack.preflight import require_broker
from chargemesh.schemas import registry
from chargemesh.schemas.codec import DecodeError, catalog, to_jsonable
from chargemesh.streams.envelope import REJECTED_SCHEMA, event_view, open_envelope, open_payload
from chargemesh.streams.topics import ALL_TOPICS
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

TAIL_LIMIT_DEFAULT = 20
_RDKAFKA_LOG = logging.getLogger("chargemesh.cli.tail.rdkafka")
_RDKAFKA_LOG.addHandler(logging.NullHandler())
_RDKAFKA_LOG.propagate = False
# With --key, the tail looks for matches among this many last records of each partition.
TAIL_KEY_SCAN_RECORDS_MAX = 100_000
# While reading what the topic holds, give up if the broker sends nothing for this long.
TAIL_IDLE_S_MAX = 15.0
TAIL_POLL_S = 0.5
TAIL_CONSUME_MAX = 500
TAIL_METADATA_TIMEOUT_S = 10.0
LINE_FIELDS_MAX = 5
LINE_FIELD_CHARS_MAX = 40
LINE_DETAIL_CHARS_MAX = 80
HEX_PREFIX_BYTES = 16
# Payload fields worth a place on a line, most telling first.
LINE_FIELDS = (
    "order_id", "reservation_id", "session_id", "settlement_id", "dispute_id", "credential_id",
    "connector_id", "to_connector_id", "vehicle_credential_id", "slot_start_at_ms",
    "to_slot_start_at_ms", "rate_per_kwh", "accepted_rate_per_kwh", "bid_rate_per_kwh",
    "new_rate_per_kwh", "total_amount", "currency", "energy_wh", "energy_import_wh",
    "cumulative_import_wh", "calendar_version", "reason_code", "outcome", "cause", "kind",
)
# Shorter labels on a line (JSON output keeps the field names).
LINE_FIELD_LABELS = {
    "reservation_id": "reservation", "order_id": "order", "session_id": "session",
    "settlement_id": "settlement", "dispute_id": "dispute", "credential_id": "credential",
    "connector_id": "connector", "to_connector_id": "to_connector",
    "vehicle_credential_id": "vehicle", "slot_start_at_ms": "slot",
    "to_slot_start_at_ms": "to_slot", "accepted_rate_per_kwh": "rate",
    "bid_rate_per_kwh": "bid", "new_rate_per_kwh": "new_rate", "rate_per_kwh": "rate",
    "reason_code": "reason",
}


def resolve_topic(name: str) -> str:
    """A catalogue topic by full name or short name (``settlements``), or any full name."""
    for spec in ALL_TOPICS:
        short = spec.name.split(".")[1]
        if name in (spec.name, short, f"{short}.v1"):
            return spec.name
    if "." in name:
        return name  # not in the catalogue: must exist on the broker (checked when read)
    shorts = ", ".join(spec.name.split(".")[1] for spec in ALL_TOPICS)
    raise click.BadParameter(f"unknown topic {name!r}; one of: {shorts} (or a full topic name)")


def iso_ms(at_ms: int) -> str:
    moment = dt.datetime.fromtimestamp(at_ms / 1000, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at_ms % 1000:03d}Z"


def _key_text(key: bytes | None) -> str | None:
    if key is None:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return "hex:" + key.hex()


def decode_record(message: Message) -> dict[str, Any]:
    """The JSON document of one record: a signed event, a rejection, or undecodable bytes."""
    value = message.value() or b""
    _kind, timestamp_ms = message.timestamp()
    doc: dict[str, Any] = {
        "topic": message.topic(), "partition": message.partition(), "offset": message.offset(),
        "key": _key_text(message.key()), "timestamp_ms": timestamp_ms,
    }
    try:
        event = open_envelope(value)
    except DecodeError as envelope_error:
        try:
            name, record = catalog().single_object_decode(value)
        except DecodeError:
            name, record = "", {}
        if name == REJECTED_SCHEMA:
            return {**doc, "kind": "rejection", "rejection": to_jsonable(record)}
        return {**doc, "kind": "undecodable", "error": str(envelope_error),
                "value_bytes": len(value), "value_hex_prefix": value[:HEX_PREFIX_BYTES].hex()}
    payload: dict[str, Any] | None = None
    try:
        payload = open_payload(event)
    except DecodeError as exc:
        doc["payload_error"] = str(exc)
    return {**doc, "kind": "event", "event": to_jsonable(event_view(event, payload))}


def _field_text(name: str, value: Any) -> str:
    if name.endswith("_at_ms") and isinstance(value, int):
        text = iso_ms(value)[:16] + "Z"
    else:
        text = str(value)
    if len(text) > LINE_FIELD_CHARS_MAX:
        text = text[:LINE_FIELD_CHARS_MAX - 1] + "…"
    return f"{LINE_FIELD_LABELS.get(name, name)}={text}"


def _line_fields(payload: dict[str, Any], key: str | None) -> list[str]:
    scalars = {k: v for k, v in payload.items()
               if isinstance(v, (str, int, float, bool)) and v != "" and v != key}
    chosen = [k for k in LINE_FIELDS if k in scalars][:LINE_FIELDS_MAX]
    if not chosen:
        chosen = list(scalars)[:LINE_FIELDS_MAX]
    return [_field_text(k, scalars[k]) for k in chosen]


def render_line(doc: dict[str, Any]) -> str:
    """One compact line: UTC time, what it is, key, a few fields, and where it sits."""
    where = click.style(f"[p{doc['partition']}@{doc['offset']}]", dim=True)
    key = f"key={doc['key']}" if doc["key"] is not None else "key=-"
    if doc["kind"] == "event":
        event = doc["event"]
        kind = click.style(f"{event['event_type'].rsplit('.', 1)[-1]:<22}", fg="cyan", bold=True)
        if event["payload"] is None:
            fields = [click.style(f"payload not decodable: {doc.get('payload_error')}", fg="red")]
        else:
            fields = _line_fields(event["payload"], doc["key"])
        at_ms = int(event["occurred_at_ms"])
    elif doc["kind"] == "rejection":
        rej = doc["rejection"]
        kind = click.style(f"{'REJECTED ' + rej['reason_code']:<22}", fg="red", bold=True)
        detail = rej["detail"]
        if len(detail) > LINE_DETAIL_CHARS_MAX:
            detail = detail[:LINE_DETAIL_CHARS_MAX - 1] + "…"
        fields = [f"type={rej['event_type'].rsplit('.', 1)[-1] or '-'}",
                  f"author={rej['author_credential_id'] or '-'}",
                  (f"source={rej['source_topic']}[{rej['source_partition']}]"
                   f"@{rej['source_offset']}"),
                  f"detail={detail!r}"]
        at_ms = int(rej["rejected_at_ms"])
    else:
        kind = click.style(f"{'UNDECODABLE':<22}", fg="magenta", bold=True)
        fields = [f"{doc['error']}; {doc['value_bytes']} bytes: {doc['value_hex_prefix']}…"]
        at_ms = int(doc["timestamp_ms"])
    time_text = click.style(iso_ms(at_ms), dim=True)
    return "  ".join([time_text, kind, key, " ".join(fields), where])


@dataclasses.dataclass
class TailPlan:
    topic: str
    from_beginning: bool
    limit: int  # 0 = no limit
    follow: bool
    key: bytes | None
    timeout_s: float | None


class TopicTail:
    """Reads one topic without a consumer group (nothing committed), partition by partition."""

    def __init__(self, settings: Settings, plan: TailPlan) -> None:
        self.plan = plan
        self.consumer = Consumer({
            **settings.kafka_client_config(),
            "group.id": f"chargemesh-cli-tail-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 100,
            # librdkafka logs every refused connection; the tail reports failures itself.
            "logger": _RDKAFKA_LOG,
        })
        self.partitions = self._partitions(settings)

    def _partitions(self, settings: Settings) -> list[int]:
        try:
            meta = self.consumer.list_topics(self.plan.topic, timeout=TAIL_METADATA_TIMEOUT_S)
        except KafkaException as exc:
            raise OpsError(f"broker at {settings.bootstrap_servers} did not answer ({exc}): "
                           "is the stack up (`chargemesh status`)?") from exc
        topic = meta.topics.get(self.plan.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            raise OpsError(f"topic {self.plan.topic} does not exist on "
                           f"{settings.bootstrap_servers} (run `chargemesh up`?)")
        return sorted(topic.partitions)

    def assign(self, tail_window: int | None) -> None:
        """From the start, or from the last ``tail_window`` records of each partition."""
        assignment = []
        for partition in self.partitions:
            if tail_window is None:
                assignment.append(TopicPartition(self.plan.topic, partition, OFFSET_BEGINNING))
                continue
            low, high = self.consumer.get_watermark_offsets(
                TopicPartition(self.plan.topic, partition), timeout=TAIL_METADATA_TIMEOUT_S)
            assignment.append(TopicPartition(self.plan.topic, partition,
                                             max(low, high - tail_window)))
        self.consumer.assign(assignment)

    def matches(self, message: Message) -> bool:
        return self.plan.key is None or message.key() == self.plan.key

    def read_existing(self) -> Iterator[Message]:
        """The records up to the end of every partition (its end when it is reached)."""
        at_end: set[int] = set()
        idle_since = time.monotonic()
        while len(at_end) < len(self.partitions):
            batch = self.consumer.consume(TAIL_CONSUME_MAX, timeout=TAIL_POLL_S)
            if batch:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > TAIL_IDLE_S_MAX:
                raise OpsError(f"the broker sent nothing for {TAIL_IDLE_S_MAX:.0f} s while "
                               f"reading {self.plan.topic}")
            for message in batch:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        at_end.add(_partition_of(message))
                        continue
                    raise OpsError(f"reading {self.plan.topic} failed: {error}")
                if self.matches(message):
                    yield message

    def follow(self) -> Iterator[Message]:
        deadline = None if self.plan.timeout_s is None else (
            time.monotonic() + self.plan.timeout_s)
        while deadline is None or time.monotonic() < deadline:
            for message in self.consumer.consume(TAIL_CONSUME_MAX, timeout=TAIL_POLL_S):
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise OpsError(f"reading {self.plan.topic} failed: {error}")
                    continue
                if self.matches(message):
                    yield message

    def close(self) -> None:
        self.consumer.close()


def _partition_of(message: Message) -> int:
    partition = message.partition()
    ensure(partition is not None, "a consumed record without a partition")
    return int(partition or 0)


def tail_records(settings: Settings, plan: TailPlan, emit: Callable[[Message], None]) -> int:
    """Emit the records the plan asks for, in order; returns how many were emitted."""
    require_broker(settings)
    registry.from_settings(settings)  # decode Confluent-framed values when configured
    tail = TopicTail(settings, plan)
    emitted = 0
    try:
        if plan.from_beginning or plan.limit == 0:
            tail.assign(None)
            for message in tail.read_existing():
                emit(message)
                emitted += 1
                if plan.limit and emitted >= plan.limit:
                    return emitted
        else:
            tail.assign(plan.limit if plan.key is None else TAIL_KEY_SCAN_RECORDS_MAX)
            # Keep the last N of each partition, then the last N of them all by record time.
            per_partition: dict[int, collections.deque[Message]] = {}
            for message in tail.read_existing():
                per_partition.setdefault(
                    _partition_of(message), collections.deque(maxlen=plan.limit)).append(message)
            merged = [m for queue in per_partition.values() for m in queue]
            merged.sort(key=lambda m: (m.timestamp()[1], _partition_of(m), m.offset() or 0))
            for message in merged[-plan.limit:]:
                emit(message)
                emitted += 1
        if plan.follow:
            for message in tail.follow():
                emit(message)
                emitted += 1
    finally:
        tail.close()
    return emitted


@click.group(cls=ChargemeshGroup)
def events() -> None:
    """Records on the chargemesh topics."""


@events.command("tail")
@click.argument("topic")
@click.option("--from-beginning", is_flag=True,
              help="Start at the first record instead of the last --limit records.")
@click.option("--limit", type=click.IntRange(min=0), default=None,
              help=f"How many records of those in the topic: the last N (default "
              f"{TAIL_LIMIT_DEFAULT}), or the first N with --from-beginning. 0 = all.")
@click.option("--follow", "-f", is_flag=True,
              help="Then keep printing new records until Ctrl-C (or --timeout).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0), default=None,
              help="With --follow: stop following after this many seconds.")
@click.option("--key", default=None, help="Only records with this key (e.g. a station id).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document per line.")
@click.pass_context
def events_tail(ctx: click.Context, topic: str, from_beginning: bool, limit: int | None,
                follow: bool, timeout_s: float | None, key: str | None, as_json: bool) -> None:
    """Decode and print the records of TOPIC (full name, or short: market, decisions, ...).

    Signed events show their type, key and a few payload fields; rejections their reason;
    bytes that decode as neither are reported with a hex prefix.
    """
    name = resolve_topic(topic)
    if from_beginning and follow and limit:
        raise click.UsageError("--limit with --from-beginning --follow would skip the records "
                               "after the first N; leave --limit out")
    if timeout_s is not None and not follow:
        raise click.UsageError("--timeout only applies to --follow")
    if limit is None:
        limit = 0 if from_beginning else TAIL_LIMIT_DEFAULT
    plan = TailPlan(name, from_beginning, limit, follow,
                    None if key is None else key.encode(), timeout_s)

    def emit(message: Message) -> None:
        doc = decode_record(message)
        click.echo(json.dumps(doc, sort_keys=True) if as_json else render_line(doc))

    try:
        emitted = tail_records(settings_of(ctx), plan, emit)
        if emitted == 0 and not as_json:
            click.echo(f"no records in {name}" + (f" with key {key!r}" if key else ""), err=True)
    except OpsError as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        pass
