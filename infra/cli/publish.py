"""``chargemesh events publish``: JSON payloads in (``schemas/json_avro.py``: decimals as strings,
bytes as hex), signed Avro out, published with the SDK publisher; ``--raw`` publishes bytes
exactly as given, for testing what the processors reject."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, BinaryIO

import click
from chargemesh.infra.cli.events import resolve_topic
from chargemesh.infra.cli.participant import (
    EVENTS_PER_PUBLISH_MAX,
    PAYLOAD_FILE_BYTES_MAX,
    RAW_BYTES_MAX,
    ParticipantError,
    _participant,
    _publish_all,
)
from chargemesh.infra.cli.root import settings_of
from chargemesh.processors.policy import POLICIES, field_at
from chargemesh.schemas.codec import SchemaError, catalog, to_jsonable
from chargemesh.schemas.json_avro import from_json
from chargemesh.streams.envelope import SignedEvent, event_view, open_payload
from chargemesh.streams.sdk.participant import Participant, topic_for

# ==== events publish ============================================================================


def resolve_event_type(name: str) -> str:
    """A packaged event type by full name or by its unique short name (``StationHeartbeat``)."""
    names: list[str] = catalog().names()
    if name in names:
        return name
    matches = [n for n in names if n.rsplit(".", 1)[-1] == name]
    if len(matches) == 1:
        return matches[0]
    hint = ", ".join(matches) if matches else "see schemas/avro/ for the event types"
    raise click.BadParameter(f"unknown event type {name!r} ({hint})", param_hint="--type")


def read_payloads(source: BinaryIO) -> list[Any]:
    """One JSON object, or a JSON list of them."""
    data = source.read(PAYLOAD_FILE_BYTES_MAX + 1)
    if len(data) > PAYLOAD_FILE_BYTES_MAX:
        raise ParticipantError(f"payload input larger than {PAYLOAD_FILE_BYTES_MAX} B")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ParticipantError(f"payload input is not JSON: {exc}") from exc
    payloads = doc if isinstance(doc, list) else [doc]
    if not payloads or len(payloads) > EVENTS_PER_PUBLISH_MAX:
        raise ParticipantError(f"1 to {EVENTS_PER_PUBLISH_MAX} payloads per publish, "
                               f"got {len(payloads)}")
    return payloads


@dataclasses.dataclass(frozen=True)
class SealOptions:
    event_type: str
    subject_key: str | None
    occurred_at_ms: int | None
    chain_id: str
    prev_hash: bytes
    event_id: str | None


def seal_payload(author: Participant, raw: Any, options: SealOptions) -> SignedEvent:
    """Convert one JSON payload under the event type's schema and sign it; PayloadError or
    SchemaError when it does not fit."""
    payload = from_json(options.event_type, raw)
    subject_key = options.subject_key
    if subject_key is None:
        policy = POLICIES.get(options.event_type)
        keyed = field_at(payload, policy.key_path) if policy and policy.key_path else None
        subject_key = keyed if isinstance(keyed, str) else author.subject_id
    return author.sign(options.event_type, payload, subject_key=subject_key,
                       occurred_at_ms=options.occurred_at_ms, chain_id=options.chain_id,
                       prev_hash=options.prev_hash, event_id=options.event_id)


def _raw_bytes(file: Path | None, hex_text: str | None) -> bytes:
    if (file is None) == (hex_text is None):
        raise click.UsageError("--raw takes the bytes from exactly one of --file or --hex")
    if hex_text is not None:
        try:
            data = bytes.fromhex(hex_text)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--hex") from exc
    else:
        with open(str(file), "rb") as handle:
            data = handle.read(RAW_BYTES_MAX + 1)
    if len(data) > RAW_BYTES_MAX:
        raise click.UsageError(f"more than {RAW_BYTES_MAX} bytes")
    return data


def _publish_raw(ctx: click.Context, topic: str | None, partition_key: str | None,
                 file: Path | None, hex_text: str | None, dry_run: bool) -> None:
    if topic is None:
        raise click.UsageError("--raw needs --topic")
    name = resolve_topic(topic)
    data = _raw_bytes(file, hex_text)
    key = partition_key or ""
    if not dry_run:
        _publish_all(settings_of(ctx), [(name, key, data)])
    click.echo(json.dumps({"topic": name, "partition_key": key, "bytes": len(data),
                           "sha256": hashlib.sha256(data).hexdigest(),
                           "published": not dry_run}, indent=2, sort_keys=True))


@click.command("publish")
@click.option("--key", "key_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="The author's key file.")
@click.option("--type", "type_name", default=None,
              help="Event type: full name or short (StationHeartbeat).")
@click.option("--file", "file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="JSON payload (an object, or a list of them); default: stdin. "
              "With --raw: the bytes to publish.")
@click.option("--subject-key", "--partition-key", "subject_key", default=None,
              help="The subject key = Kafka partition key (default: the policy's key field of "
              "the payload, e.g. station_id, else the author's subject).")
@click.option("--occurred-at-ms", type=click.IntRange(min=0), default=None,
              help="Default: now.")
@click.option("--topic", default=None, help="Default: the event type's topic.")
@click.option("--chain-id", default="", help="Lineage chain id (e.g. the session id).")
@click.option("--prev-hash", "prev_hash_hex", default="", help="Previous event hash, hex.")
@click.option("--event-id", default=None, help="Fixed event id (one payload only).")
@click.option("--raw", is_flag=True, help="Publish the bytes of --file or --hex unchanged.")
@click.option("--hex", "hex_text", default=None, help="With --raw: the bytes as hex.")
@click.option("--dry-run", is_flag=True, help="Build, sign and print; publish nothing.")
@click.pass_context
def events_publish(ctx: click.Context, key_file: Path | None, type_name: str | None,
                   file: Path | None, subject_key: str | None, occurred_at_ms: int | None,
                   topic: str | None, chain_id: str, prev_hash_hex: str, event_id: str | None,
                   raw: bool, hex_text: str | None, dry_run: bool) -> None:
    """Sign JSON payloads as Avro events and publish them (or, with --raw, publish bytes as
    given). Prints event id, topic, partition key and the event's JSON view for each."""
    if raw:
        if key_file is not None or type_name is not None:
            raise click.UsageError("--raw publishes bytes as given: no --key or --type "
                                   "(the Kafka key is --subject-key/--partition-key)")
        _publish_raw(ctx, topic, subject_key, file, hex_text, dry_run)
        return
    if key_file is None or type_name is None or hex_text is not None:
        raise click.UsageError("publishing a payload needs --key and --type (and no --hex)")
    author = _participant(key_file)
    options = SealOptions(resolve_event_type(type_name), subject_key, occurred_at_ms, chain_id,
                          _hex_option(prev_hash_hex, "--prev-hash"), event_id)
    target = resolve_topic(topic) if topic else topic_for(options.event_type)
    sealed = _seal_all(author, _payloads(file), options)
    if not dry_run:
        _publish_all(settings_of(ctx),
                     [(target, e.body.subject_key, e.encode()) for e in sealed])
    for event in sealed:
        doc = {"event_id": event.event_id, "topic": target,
               "partition_key": event.body.subject_key, "published": not dry_run,
               "event": event_view(event, to_jsonable(open_payload(event)))}
        click.echo(json.dumps(doc, sort_keys=True, indent=2 if len(sealed) == 1 else None))


def _hex_option(text: str, hint: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=hint) from exc


def _payloads(file: Path | None) -> list[Any]:
    try:
        if file is None:
            return read_payloads(click.get_binary_stream("stdin"))
        with open(file, "rb") as handle:
            return read_payloads(handle)
    except ParticipantError as exc:
        raise click.ClickException(str(exc)) from exc


def _seal_all(author: Participant, payloads: list[Any], options: SealOptions) -> list[SignedEvent]:
    """Every payload converted and signed before anything is published (all or nothing)."""
    if options.event_id is not None and len(payloads) != 1:
        raise click.UsageError("--event-id names one event: give one payload")
    sealed = []
    for index, raw in enumerate(payloads):
        try:
            sealed.append(seal_payload(author, raw, options))
        except SchemaError as exc:
            which = f"payload {index + 1} of {len(payloads)}" if len(payloads) > 1 else "payload"
            raise click.ClickException(
                f"{which} does not fit {options.event_type}: {exc}") from exc
    return sealed
