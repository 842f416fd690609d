"""``chargemesh bench``: the benchmark suite, every figure measured in one run on this machine.

1. single-core Ed25519 verify rate (the physical limit of the pipeline) against the sustained
   throughput of signed orders through ingress verification, the station ledger and ClickHouse,
   per worker; the same work done by a plain confluent-kafka loop (consume the market topic ->
   ``pipeline.verify`` -> ``pipeline.market_batch``, the function the Faust agent calls ->
   produce the outputs and the state, acknowledged), to show what the stream framework costs;
2. walk-up authorisation latency; 3. re-pricing latency after a grid event with N active sessions
   (until every session has its ``RepriceProposed``); 4. settlement finality latency;
5. audit replay rate against 80% of the verify limit times the cores used;
6. throughput with 1 and 2 workers and with 4 and 8 partitions;
and where the time goes (cProfile of the Faust worker and of the plain loop, per phase).

Programs that print figures; nothing here asserts on time. Everything runs on private embedded
stacks in a temporary directory. The plain loop runs as a child process of this module
(``python -m chargemesh.infra.bench.suite plain-loop``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import json
import pstats
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from chargemesh.infra.bench.figures import DEFAULT, QUICK, Sizes, render, summarise_profile
from chargemesh.infra.bench.suite_run import run_suite
from chargemesh.infra.bench.figures import (  # noqa: F401 - public names of the suite
    category_of, is_blocking, latency_summary, parse_worker_stats, plan)
from chargemesh.infra.config import Settings, load_settings
from chargemesh.units import SECOND_MS

# ---- the plain loop (child process) -------------------------------------------------------------

PLAIN_BATCH_MAX = 500
PLAIN_BATCH_WAIT_S = 0.005


class PlainLoop:
    """The market processor's work without Faust: one confluent-kafka consumer assigned every
    market partition (from the Faust group's committed offsets), the same pure pipeline
    (``processors/pipeline.py``), outputs produced and acknowledged, then the station state
    written and acknowledged, per batch."""

    def __init__(self, settings: Settings, profile: bool,
                 from_offsets: dict[int, int] | None = None) -> None:
        from chargemesh.processors.runtime.app import (
            APP_ID,
            load_anchors,
            load_processor_signer,
        )
        from chargemesh.processors.runtime.changelog import ChangelogTable
        from chargemesh.streams import topics
        from confluent_kafka import Consumer, Producer, TopicPartition

        self.settings = settings
        self.signer = load_processor_signer(settings)
        self.store, self.ledgers, self.positions = asyncio.run(self._restore(
            load_anchors(settings), ChangelogTable(topics.STATION_LEDGER_STATE.name),
            ChangelogTable(topics.EVENT_POSITION_STATE.name)))
        self.partitions = topics.partitions_for(topics.MARKET, settings.partitions)
        self.consumer = Consumer(dict(settings.kafka_client_config(), **{
            "group.id": APP_ID, "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": settings.consumer_fetch_wait_ms}))
        wanted = [TopicPartition(topics.MARKET.name, p) for p in range(self.partitions)]
        committed = self.consumer.committed(wanted, timeout=10)
        # From the Faust group's committed offsets, or past what an earlier plain loop did.
        self.next_offsets = {tp.partition: max(tp.offset, (from_offsets or {}).get(
            tp.partition, 0), 0) for tp in committed}
        self.consumer.assign([TopicPartition(topics.MARKET.name, p, o)
                              for p, o in self.next_offsets.items()])
        self.producer = Producer(dict(settings.kafka_client_config(), **{
            "acks": "all", "linger.ms": 2, "enable.idempotence": False,
            "message.max.bytes": topics.MESSAGE_BYTES_MAX}))
        # Station ledgers as decoded when last written (the Faust worker keeps the same cache).
        self.decoded: dict[str, Any] = {}
        self.phases: dict[str, float] = {}
        self.profiles: dict[str, cProfile.Profile] = {}
        self.profile = profile
        self.events = self.batches = 0
        self.first_s = self.last_s = 0.0

    async def _restore(self, anchors: list[Any], *tables: Any) -> Any:
        from aiokafka import AIOKafkaProducer
        from chargemesh.processors.runtime.changelog import read_changelog
        from chargemesh.processors.runtime.follower import GovernanceFollower
        from chargemesh.streams import topics

        # The processors' own PROCESSOR credential is in the governance log like any other.
        follower = GovernanceFollower(self.settings.kafka_client_config(), anchors)
        await follower.start()
        await follower.catch_up()
        await follower.stop()
        producer = AIOKafkaProducer(bootstrap_servers=self.settings.bootstrap_servers.split(","),
                                    acks="all", enable_idempotence=False)
        await producer.start()
        try:
            parts = list(range(topics.partitions_for(topics.MARKET, self.settings.partitions)))
            for table in tables:
                await read_changelog(self.settings, table, parts, producer)
        finally:
            await producer.stop()
        return (follower.store, *tables)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        prof = None
        if self.profile:
            prof = self.profiles.setdefault(name, cProfile.Profile())
            prof.enable()
        started = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - started
            if prof is not None:
                prof.disable()

    def run(self, stop: Callable[[], bool]) -> None:
        while not stop():
            with self.phase("consume"):
                msgs = [m for m in self.consumer.consume(PLAIN_BATCH_MAX, PLAIN_BATCH_WAIT_S)
                        if not m.error()]
            if msgs:
                if not self.first_s:
                    self.first_s = time.perf_counter()
                self.batch(msgs)
                self.last_s = time.perf_counter()

    def batch(self, msgs: list[Any]) -> None:
        """One batch through the same pure pipeline the Faust agent calls: verify, decide,
        publish the outputs (acknowledged), then write the state (acknowledged)."""
        from chargemesh.processors import pipeline
        from chargemesh.processors.records import Record

        records = [Record(m.topic(), m.partition(), m.offset(), m.key(), m.value())
                   for m in msgs]
        for record in records:
            self.next_offsets[record.partition] = record.offset + 1
        with self.phase("verify (pipeline.verify)"):
            verdicts = [pipeline.verify(record, self.store) for record in records]
        with self.phase("decide (pipeline.market_batch)"):
            context = pipeline.BatchContext(self.store, self.signer, self.settings.partitions,
                                            int(time.time() * SECOND_MS))
            tables = pipeline.MarketTables(self.ledgers.data, self.positions.data, self.decoded)
            result = pipeline.market_batch(records, verdicts, tables, context)
        with self.phase("publish outputs (produce + ack)"):
            for out in result.outputs:
                self._produce(out.topic, out.key, out.value, headers=list(out.headers) or None)
            self._flush()
        with self.phase("persist state (produce + ack)"):
            for write in result.state_writes:
                self._produce(write.topic, write.key, write.value, partition=write.partition)
            self._flush()
            by_topic = {table.topic: table for table in (self.ledgers, self.positions)}
            for write in result.state_writes:
                by_topic[write.topic].data[write.key] = write.value
        self.decoded.update(result.ledgers)
        self.events += len(msgs)
        self.batches += 1

    def _produce(self, topic: str, key: bytes, value: bytes, **kwargs: Any) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, **kwargs)
                return
            except BufferError:
                self.producer.poll(0.01)

    def _flush(self) -> None:
        if self.producer.flush(60):
            raise RuntimeError("plain loop: outputs not acknowledged in 60 s")

    def report(self) -> dict[str, Any]:
        wall = (self.last_s - self.first_s) if self.first_s else 0.0
        out: dict[str, Any] = {"events": float(self.events), "batches": float(self.batches),
                               "wall_s": wall, "phases_s": self.phases,
                               "next_offsets": self.next_offsets}
        if self.profile:
            out["profiles"] = {}
            combined: pstats.Stats | None = None
            for name, prof in self.profiles.items():
                stats = pstats.Stats(prof)
                summary = summarise_profile(stats, self.events)
                out["profiles"][name] = summary["top_functions"][:5]
                if combined is None:
                    combined = stats
                else:
                    combined.add(prof)
            if combined is not None:
                summary = summarise_profile(combined, self.events)
                summary["phases"] = {name: {"s": s, "us_per_event": s * 1e6 / max(
                    self.events, 1)} for name, s in self.phases.items() if name != "consume"}
                out["summary"] = summary
        return out


def plain_loop_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench_suite plain-loop")
    parser.add_argument("--ready", required=True)
    parser.add_argument("--report", required=True)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--from-offsets", default="{}", help="JSON {partition: offset}")
    args = parser.parse_args(argv)
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda s, f: stopping.append(s))
    loop = PlainLoop(load_settings(), args.profile,
                     {int(k): int(v) for k, v in json.loads(args.from_offsets).items()})
    Path(args.ready).write_text("ready")
    try:
        loop.run(lambda: bool(stopping))
    finally:
        loop.consumer.close()
        Path(args.report).write_text(json.dumps(loop.report()))


# ---- the command ----------------------------------------------------------------------------------

import click


def _sizes_from(quick: bool, overrides: dict[str, Any]) -> tuple[Sizes, str]:
    base, name = (QUICK, "quick") if quick else (DEFAULT, "default")
    changes = {k: v for k, v in overrides.items() if v not in (None, ())}
    if changes:
        name += " (adjusted)"
    return dataclasses.replace(base, **changes), name


@click.command(name="bench")
@click.option("--quick", is_flag=True,
              help="Smaller sizes: a run of about 2-3 minutes on 2 shared cores.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the JSON report on stdout (the table goes to stderr).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the JSON report here (default: bench-<time>.json in the state dir).")
@click.option("--orders", type=int, default=None, help="Orders per throughput measurement.")
@click.option("--walk-ups", type=int, default=None)
@click.option("--finalities", type=int, default=None)
@click.option("--reprice-sessions", type=int, default=None)
@click.option("--reprice-rounds", type=int, default=None)
@click.option("--profile-orders", type=int, default=None)
@click.option("--stations", type=int, default=None, help="Stations per throughput measurement.")
@click.option("--partitions", type=int, multiple=True, help="Partition counts (repeat).")
@click.option("--workers", type=int, multiple=True, help="Worker counts (repeat).")
@click.option("--no-progress", is_flag=True)
@click.pass_context
def bench(ctx: click.Context, quick: bool, as_json: bool, out: Path | None, orders: int | None,
          walk_ups: int | None, finalities: int | None, reprice_sessions: int | None,
          reprice_rounds: int | None, profile_orders: int | None, stations: int | None,
          partitions: tuple[int, ...], workers: tuple[int, ...], no_progress: bool) -> None:
    """Measure the pipeline against the Ed25519 verify limit, latencies, audit, scaling and
    where the time goes, on private embedded stacks; print a table and a JSON report."""
    from chargemesh.infra.cli.root import settings_of
    from rich.console import Console

    sizes, name = _sizes_from(quick, dict(  # noqa: C408
        orders=orders, walk_ups=walk_ups, finalities=finalities,
        reprice_sessions=reprice_sessions, reprice_rounds=reprice_rounds,
        profile_orders=profile_orders, stations=stations,
        partitions=tuple(sorted(set(partitions))), workers=tuple(sorted(set(workers)))))
    settings = settings_of(ctx)
    results = run_suite(sizes, name, progress=not no_progress)
    text = json.dumps(results, indent=2, default=str)
    if out is None:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        out = settings.state_dir / time.strftime("bench-%Y%m%d-%H%M%S.json")
    out.write_text(text)
    console = Console(stderr=as_json)
    console.print(render(results))
    console.print(f"JSON report: {out}")
    if as_json:
        click.echo(text)


if __name__ == "__main__":
    if sys.argv[1:2] == ["plain-loop"]:
        plain_loop_main(sys.argv[2:])
    else:
        print(json.dumps(run_suite(QUICK, "quick"), indent=2, default=str))
