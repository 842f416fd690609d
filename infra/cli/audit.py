"""``chargemesh audit`` and ``chargemesh checkpoint``: the regulator's replay (P5) and the signed
Merkle checkpoints it checks.

Everything here only moves data: topic and archive reads, key files, output. The processors'
and the checkpoints' credentials come from the governance topic, like every other credential.
The audit itself is :mod:`chargemesh.processors.audit.replay`; checkpoints are
:mod:`chargemesh.processors.audit.checkpoints`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click
from chargemesh.infra.cli.errors import ChargemeshGroup
from chargemesh.infra.cli.root import settings_of
from chargemesh.infra.cli.tables import print_table
from chargemesh.infra.config import Settings
from chargemesh.infra.stack.preflight import require_broker, require_clickhouse
from chargemesh.infra.stack.worker import publisher
from chargemesh.processors.audit import checkpoints as checkpointer
from chargemesh.processors.audit.checkpoints import Checkpoint, LogRecord
from chargemesh.processors.audit.replay import AuditReport, AuditSource, audit
from chargemesh.processors.governance import PROCESSOR_ROLE, ChainOk, TrustStore
from chargemesh.processors.ingress import admit_governance
from chargemesh.processors.runtime.app import load_anchors
from chargemesh.schemas import registry
from chargemesh.streams import topics
from chargemesh.streams.envelope import open_envelope, open_payload
from chargemesh.streams.keys import Signer
from chargemesh.streams.sdk.participant import now_ms
from confluent_kafka import Consumer, TopicPartition
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

# The embedded broker under-reports end offsets: a topic is read until this many fetches in a
# row return nothing.
EMPTY_POLLS_TO_END = 8
POLL_TIMEOUT_S = 0.1
CONSUME_BATCH_MAX = 5_000
READ_RECORDS_MAX = 20_000_000
EXIT_FINDINGS = 1
FINDINGS_SHOWN_MAX = 50
_console = Console(stderr=True)


def read_topics(settings: Settings, names: list[str]) -> list[LogRecord]:
    """Every record of ``names`` from offset 0, read until the topics stay empty."""
    require_broker(settings)
    registry.from_settings(settings)  # decode Confluent-framed values when configured
    consumer = Consumer(dict(settings.kafka_client_config(), **{
        "group.id": "chargemesh-audit-reader", "enable.auto.commit": False,
        "fetch.wait.max.ms": 10}))
    try:
        assignment = []
        for name in names:
            meta = consumer.list_topics(name, timeout=10).topics[name]
            assignment += [TopicPartition(name, p, 0) for p in sorted(meta.partitions)]
        consumer.assign(assignment)
        out: list[LogRecord] = []
        empty = 0
        while empty < EMPTY_POLLS_TO_END and len(out) < READ_RECORDS_MAX:
            batch = consumer.consume(CONSUME_BATCH_MAX, timeout=POLL_TIMEOUT_S)
            good = [m for m in batch if not m.error()]
            empty = 0 if good else empty + 1
            out += [LogRecord(m.topic(), m.partition(), m.offset(), m.key(), m.value() or b"")
                    for m in good]
        return out
    finally:
        consumer.close()


def kafka_source(settings: Settings) -> AuditSource:
    records = read_topics(settings, [topics.GOVERNANCE.name, *checkpointer.CHECKPOINTED_TOPICS,
                                     topics.CHECKPOINTS.name])
    by_topic: dict[str, list[LogRecord]] = {}
    for r in records:
        by_topic.setdefault(r.topic, []).append(r)
    governance = sorted(by_topic.get(topics.GOVERNANCE.name, []), key=lambda r: r.offset)
    logs = [r for name in checkpointer.CHECKPOINTED_TOPICS for r in by_topic.get(name, [])]
    return AuditSource("kafka", governance, True, logs, by_topic.get(topics.CHECKPOINTS.name, []))


def clickhouse_source(settings: Settings) -> AuditSource:
    """The ``events`` archive as an audit source (``sinks.queries.audit.read_archive``)."""
    from chargemesh.sinks.migrate import clickhouse_client
    from chargemesh.sinks.queries.audit import read_archive

    require_clickhouse(settings)
    client = clickhouse_client(settings)
    try:
        return read_archive(client)
    finally:
        client.disconnect()


def load_checkpoint_signer(settings: Settings) -> Signer:
    """The key of the deployment's CHECKPOINT credential (its own, never the processors')."""
    path = settings.checkpoint_key_path
    if not path.is_file():
        raise click.UsageError(
            f"no checkpoint credential key at {path}: the deployment's governance issues one "
            "(role CHECKPOINT, a key of its own; `chargemesh up` does for its dev governance); "
            "set CHARGEMESH_CHECKPOINT_KEY_FILE")
    return Signer.load(path)


def governance_store(settings: Settings, records: list[LogRecord]) -> TrustStore:
    """The trust store the governance records (in offset order) build from the anchors."""
    store = TrustStore(load_anchors(settings))
    for record in sorted(records, key=lambda r: r.offset):
        admit_governance(record.value, record.key, store)
    return store


def run_audit(settings: Settings, authority_id: str, window_ms: tuple[int, int],
              source_name: str = "kafka", show_progress: bool = False) -> AuditReport:
    anchors = load_anchors(settings)
    source = clickhouse_source(settings) if source_name == "clickhouse" else kafka_source(
        settings)
    total = len(source.governance) + len(source.logs) + len(source.checkpoints)
    with Progress(TextColumn("replaying"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=_console, disable=not show_progress) as bar:
        task = bar.add_task("audit", total=total)
        return audit(source, anchors, authority_id, window_ms,
                     progress=lambda n: bar.update(task, completed=n), clock=time.perf_counter)


def summary_table(report: AuditReport) -> Table:
    table = Table(title=f"audit of {report.authority_id} ({report.source})")
    table.add_column("what")
    table.add_column("figure", justify="right")
    for name, value in (
            ("records replayed", report.events_replayed),
            ("governance events replayed", report.governance_events),
            ("events re-verified", report.events_verified),
            ("settlements checked", report.settlements_checked),
            ("settlements recomputed exactly", report.settlements_recomputed),
            ("settlements final", report.settlements_final),
            ("checkpoints verified", report.checkpoints_verified),
            ("checkpoints not checkable from this source", report.checkpoints_skipped),
            ("settlements verified, not recomputed",
             sum(report.settlements_not_recomputed.values())),
            ("undecodable records (no authority; see --json)", report.unattributed_count),
            ("replay rate (records/s)", f"{report.events_per_s:,.0f}"),
            ("findings", len(report.findings))):
        table.add_row(name, str(value))
    for currency, total in sorted(report.totals_by_currency.items()):
        table.add_row(f"recomputed total {currency}", str(total))
    return table


def findings_table(report: AuditReport) -> Table:
    table = Table(title="findings")
    for column in ("code", "event", "type", "where", "session", "detail"):
        table.add_column(column, overflow="fold")
    for f in report.findings[:FINDINGS_SHOWN_MAX]:
        table.add_row(f.code, f.event_id, f.event_type.rsplit(".", 1)[-1], f.where, f.session_id,
                      f.detail)
    return table


def record_findings(settings: Settings, report: AuditReport, audited_at_ms: int) -> str:
    """Write the report's findings to ClickHouse ``audit_findings``; returns the audit id."""
    from chargemesh.sinks.migrate import clickhouse_client
    from chargemesh.sinks.queries.audit import finding_rows, insert_findings

    audit_id, rows = finding_rows(report, audited_at_ms)
    if rows:
        client = clickhouse_client(settings)
        try:
            insert_findings(client, rows)
        finally:
            client.disconnect()
    return audit_id


@click.group(cls=ChargemeshGroup, name="audit", invoke_without_command=True)
@click.option("--authority", "authority_id", default="", help="The rate authority audited.")
@click.option("--from", "from_ms", type=int, default=0, help="Settlements admitted from (ms).")
@click.option("--to", "to_ms", type=int, default=2**62, help="... until before (ms).")
@click.option("--source", "source_name", type=click.Choice(["kafka", "clickhouse"]),
              default="kafka", help="Replay the topics, or the ClickHouse events archive.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--record", is_flag=True, help="Also write the findings to ClickHouse.")
@click.pass_context
def audit_command(ctx: click.Context, authority_id: str, from_ms: int, to_ms: int,
                  source_name: str, as_json: bool, record: bool) -> None:
    """Replay every settlement under a rate authority; exit 1 on any finding."""
    if ctx.invoked_subcommand is not None:
        return
    if not authority_id:
        raise click.UsageError("--authority is required")
    report = run_audit(settings_of(ctx), authority_id, (from_ms, to_ms), source_name,
                       show_progress=not as_json)
    if record:
        record_findings(settings_of(ctx), report, now_ms())
    if as_json:
        click.echo(json.dumps(report.as_json(), indent=2, sort_keys=True))
    else:
        out = Console()
        print_table(out, summary_table(report))
        if report.findings:
            print_table(out, findings_table(report))
    ctx.exit(0 if report.ok else EXIT_FINDINGS)


# ---- checkpoints and proofs ------------------------------------------------------------------


def signed_checkpoints(records: list[LogRecord], store: TrustStore) -> list[Checkpoint]:
    """Checkpoints signed by a CHECKPOINT credential in force at their time whose key is not
    the processors' (others are ignored here; the audit reports them)."""
    out = []
    for record in records:
        try:
            event = open_envelope(record.value)
            payload = open_payload(event)
        except Exception:  # noqa: BLE001, S112 - a bad record is simply not a checkpoint
            continue
        if event.event_type != checkpointer.CHECKPOINT_EVENT_TYPE:
            continue
        verdict = store.check_event(event, payload)
        if isinstance(verdict, ChainOk) and not store.key_holds_role(
                verdict.principal.public_key, PROCESSOR_ROLE):
            out.append(Checkpoint.of(event, payload))
    return out


def _read_for_checkpoints(settings: Settings
                          ) -> tuple[dict[str, list[LogRecord]], list[LogRecord], TrustStore]:
    """The checkpointed logs by log id, the checkpoint records, and the governance store."""
    records = read_topics(settings, [topics.GOVERNANCE.name, *checkpointer.CHECKPOINTED_TOPICS,
                                     topics.CHECKPOINTS.name])
    logs = checkpointer.partition_logs(r for r in records if r.topic not in (
        topics.CHECKPOINTS.name, topics.GOVERNANCE.name))
    store = governance_store(settings, [r for r in records if r.topic == topics.GOVERNANCE.name])
    return logs, [r for r in records if r.topic == topics.CHECKPOINTS.name], store


def publish_checkpoints(settings: Settings) -> list[dict[str, Any]]:
    """Sign and publish a checkpoint of every log partition that grew since its last one."""
    logs, checkpoint_records, store = _read_for_checkpoints(settings)
    signer = load_checkpoint_signer(settings)
    previous = checkpointer.latest(signed_checkpoints(checkpoint_records, store))
    events = checkpointer.next_checkpoints(signer, logs, previous, now_ms())
    pub = publisher(settings)
    for event in events:
        pub.publish(event, topics.CHECKPOINTS.name)
    pub.flush()
    return [dict(open_payload(e), event_id=e.event_id) for e in events]


def prove(settings: Settings, event_id: str = "", raw: bytes | None = None) -> dict[str, Any]:
    """Where ``event_id`` (or the exact record bytes ``raw``) sits in the signed log, with its
    inclusion proof verified against the latest signed checkpoint covering it."""
    logs, checkpoint_records, store = _read_for_checkpoints(settings)
    latest = checkpointer.latest(signed_checkpoints(checkpoint_records, store))
    answer: dict[str, Any] = {"event_id": event_id, "included": False, "proof": None,
                              "checkpoints": len(latest)}
    for lid, log in sorted(logs.items()):
        cp = latest.get(lid)
        for record in log:
            if raw is not None and record.value != raw:
                continue
            if raw is None and not _is_event(record, event_id):
                continue
            proof = checkpointer.prove_inclusion(log, record.offset, cp) if cp else None
            answer.update(where=f"{lid}@{record.offset}", proof=proof and proof.as_json())
            # The proof verifies the bytes of the record as read against the signed root.
            answer["included"] = bool(proof and proof.verify(raw if raw is not None
                                                             else record.value))
            return answer
    return answer


def _is_event(record: LogRecord, event_id: str) -> bool:
    try:
        return bool(open_envelope(record.value).event_id == event_id)
    except Exception:  # noqa: BLE001 - undecodable records are no event
        return False


@audit_command.command(name="proof")
@click.argument("event_id", default="")
@click.option("--record-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Prove these exact record bytes instead of an event id.")
@click.pass_context
def audit_proof(ctx: click.Context, event_id: str, record_file: str | None) -> None:
    """Inclusion proof of an event (or record) against the signed checkpoints; exit 1 if the
    record is not in the signed log."""
    raw = Path(record_file).read_bytes() if record_file else None
    if not event_id and raw is None:
        raise click.UsageError("give an EVENT_ID or --record-file")
    answer = prove(settings_of(ctx), event_id, raw)
    click.echo(json.dumps(answer, indent=2, sort_keys=True))
    ctx.exit(0 if answer["included"] else EXIT_FINDINGS)


@click.command(name="checkpoint")
@click.pass_context
def checkpoint_command(ctx: click.Context) -> None:
    """Sign and publish a Merkle checkpoint of every lineage log partition that grew."""
    started = time.monotonic()
    published = publish_checkpoints(settings_of(ctx))
    table = Table(title=f"{len(published)} checkpoints signed in "
                        f"{time.monotonic() - started:.1f} s")
    for column in ("log", "tree size", "offsets", "root"):
        table.add_column(column)
    for p in published:
        table.add_row(p["log_id"], str(p["tree_size"]),
                      f"{p['first_offset']}..{p['last_offset']}", p["root_hash"].hex()[:32])
    print_table(Console(), table)
    sys.stdout.flush()
