"""Running the processors: worker processes, topic readers and a publisher, for the CLI, the
simulator, benchmarks and tests."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from confluent_kafka import Consumer, TopicPartition

from chargemesh.infra.config import Settings
from chargemesh.infra.stack import supervisor
from chargemesh.schemas.codec import catalog
from chargemesh.schemas import registry
from chargemesh.streams.envelope import SignedEvent, open_envelope, open_payload
from chargemesh.streams.sdk.participant import Participant, Publisher

WAIT_S_MAX = 60.0
POLL_S = 0.2


def write_anchors(settings: Settings, *roots: Participant) -> None:
    """Declare ``roots`` the deployment's trust anchors (what workers load at start)."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    settings.trust_anchors_path.write_text(json.dumps(
        [{"authority_id": r.credential_id, "public_key_hex": r.public_key.hex()} for r in roots]))


WORKER_MODULE = "chargemesh.infra.stack.worker_main"
WORKER_STOP_GRACE_S = 20.0


class WorkerProcess:
    """A processor worker in its own process, so tests can SIGKILL it for real.

    Started, watched and stopped through :mod:`chargemesh.infra.stack.supervisor`.
    """

    stop_grace_s = WORKER_STOP_GRACE_S

    def __init__(self, settings: Settings, index: int = 0, loglevel: str = "warning") -> None:
        self.settings, self.index, self.loglevel = settings, index, loglevel
        self.log_path = settings.state_dir / f"worker-{index}.log"
        self.record: supervisor.ProcessRecord | None = None

    def argv(self) -> list[str]:
        return [sys.executable, "-m", WORKER_MODULE, "--index", str(self.index),
                "--loglevel", self.loglevel]

    def start(self) -> "WorkerProcess":
        env = dict(os.environ, **self.settings.as_environ())
        self.record = supervisor.spawn(f"worker-{self.index}", self.argv(), {}, self.log_path,
                                       env=env)
        return self

    @property
    def pid(self) -> int | None:
        return None if self.record is None else self.record.pid

    def kill(self) -> None:
        if self.record is not None:
            supervisor.kill(self.record)

    def restart_after_kill(self) -> "WorkerProcess":
        """SIGKILL, then start again once the dead member's group session has expired.

        A worker that joins while the killed one still counts as a group member was seen to
        stop receiving records on the embedded broker; waiting out ``session_timeout_ms`` first
        avoids that path.
        """
        self.kill()
        time.sleep(self.settings.session_timeout_ms / 1000 + 2)
        return self.start()

    def stop(self) -> None:
        """SIGTERM, SIGKILL after ``stop_grace_s``."""
        if self.record is not None:
            supervisor.stop(self.record, self.stop_grace_s)

    def alive(self) -> bool:
        return self.record is not None and supervisor.pid_alive(self.record)


@dataclasses.dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]

    def event(self) -> SignedEvent:
        return open_envelope(self.value)

    def payload(self) -> dict[str, Any]:
        return open_payload(self.event())

    def rejection(self) -> dict[str, Any]:
        return catalog().single_object_decode(self.value)[1]


class TopicReader:
    """Reads a topic from the beginning (no consumer group), accumulating every record."""

    def __init__(self, settings: Settings, topic: str) -> None:
        conf = dict(settings.kafka_client_config(), **{
            "group.id": "unused-reader", "enable.auto.commit": False,
            "fetch.wait.max.ms": 10})
        registry.from_settings(settings)  # decode Confluent-framed values when configured
        self.consumer = Consumer(conf)
        meta = self.consumer.list_topics(topic, timeout=10)
        parts = meta.topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        self.records: list[Record] = []

    def poll(self, seconds: float = POLL_S) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for msg in self.consumer.consume(1000, timeout=0.05):
                if msg.error():
                    continue
                self.records.append(Record(msg.topic(), msg.partition(), msg.offset(), msg.key(),
                                           msg.value(), dict(msg.headers() or [])))

    def wait_for(self, predicate: Callable[[list[Record]], bool],
                 timeout_s: float = WAIT_S_MAX,
                 workers: tuple["WorkerProcess", ...] = ()) -> list[Record]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for worker in workers:
                if not worker.alive():
                    raise RuntimeError("worker died:\n" + log_tail(worker.log_path))
            self.poll()
            if predicate(self.records):
                return self.records
        raise TimeoutError(f"condition not met within {timeout_s}s; {len(self.records)} records")

    def close(self) -> None:
        self.consumer.close()


def publisher(settings: Settings) -> Publisher:
    return Publisher(settings.kafka_client_config(), framing=registry.from_settings(settings))


def event_ids(records: list[Record]) -> set[str]:
    out = set()
    for r in records:
        try:
            out.add(r.event().event_id)
        except Exception:
            pass
    return out


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
