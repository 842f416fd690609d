"""Session fixtures: a private embedded stack (broker + ClickHouse) for the integration tests.

The test session starts its own stack on free ports in a temporary state directory, so it runs
beside a developer's ``chargemesh up`` without touching it, and stops it at the end. With
``CHARGEMESH_TEST_EXTERNAL=1`` the tests use the stack the environment describes
(``CHARGEMESH_*`` variables, e.g. after ``chargemesh up``) and start nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chargemesh.infra.config import Settings, load_settings
from chargemesh.infra.stack.supervisor import free_ports
from chargemesh.infra.stack.embedded import EmbeddedStack

EXTERNAL_ENV = "CHARGEMESH_TEST_EXTERNAL"
# Consumer-group joins cost about half the session timeout on the embedded broker (STACK.md).
TEST_SESSION_TIMEOUT_MS = 6000


def private_settings(state_dir: Path) -> Settings:
    """Settings for a stack of its own: free loopback ports, embedded everything."""
    kafka, clickhouse, clickhouse_http, worker_web = free_ports(4)
    return Settings(
        state_dir=state_dir,
        kafka_bootstrap="",
        kafka_port=kafka,
        clickhouse_host="",
        clickhouse_port=clickhouse,
        clickhouse_http_port=clickhouse_http,
        worker_web_port=worker_web,
        session_timeout_ms=TEST_SESSION_TIMEOUT_MS,
    )


def external_stack() -> bool:
    return os.environ.get(EXTERNAL_ENV) == "1"


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings of a running, provisioned stack (topics created, migrations applied)."""
    if external_stack():
        yield load_settings().with_overrides(session_timeout_ms=TEST_SESSION_TIMEOUT_MS)
        return
    settings = private_settings(tmp_path_factory.mktemp("stack"))
    stack = EmbeddedStack(settings)
    try:
        stack.up()
        yield settings
    finally:
        stack.down()


@pytest.fixture
def new_stack_settings(tmp_path: Path) -> Callable[[], Settings]:
    """A factory for one more private stack's settings, in this test's own tmp dir (not started)."""
    counter = iter(range(1_000))

    def make() -> Settings:
        return private_settings(tmp_path / f"stack-{next(counter)}")

    return make


# ---- the processors on the real stack ----------------------------------------------------------

import dataclasses as _dc  # noqa: E402

from chargemesh.infra.stack.worker import TopicReader, WorkerProcess, publisher, write_anchors  # noqa: E402
from tests.support.world import World, make_world  # noqa: E402


@_dc.dataclass
class Mesh:
    settings: Settings
    world: World
    worker: WorkerProcess

    def query(self, sql: str, params: dict[str, object] | None = None) -> list[tuple]:
        from chargemesh.sinks.migrate import clickhouse_client

        client = clickhouse_client(self.settings)
        try:
            return list(client.execute(sql, params or {}))
        finally:
            client.disconnect()

    def wait_rows(self, sql: str, params: dict[str, object] | None = None,
                  count: int = 1, timeout_s: float = 45.0) -> list[tuple]:
        """Poll ClickHouse (fed by the session's sink) until ``sql`` returns ``count`` rows."""
        import time as _time

        deadline = _time.monotonic() + timeout_s
        rows: list[tuple] = []
        while _time.monotonic() < deadline:
            rows = self.query(sql, params)
            if len(rows) >= count:
                return rows
            _time.sleep(0.3)
        raise TimeoutError(f"{len(rows)} of {count} rows after {timeout_s}s: {sql}")

    def publish(self, *events: object) -> None:
        pub = publisher(self.settings)
        for event in events:
            pub.publish(event)  # type: ignore[arg-type]
        pub.flush()

    def reader(self, topic: str) -> TopicReader:
        return TopicReader(self.settings, topic)


import contextlib as _contextlib  # noqa: E402


@_contextlib.contextmanager
def running_mesh(settings: Settings) -> Iterator[Mesh]:
    """A provisioned stack with one root authority, its issuer, a running processor worker and a
    ClickHouse sink."""
    world = make_world()
    world.deploy_identity(settings)  # the processors' shared key, before the worker starts
    write_anchors(settings, world.root)
    pub = publisher(settings)
    for event in world.governance:
        pub.publish(event)
    pub.flush()
    world.governance.clear()
    worker = WorkerProcess(settings, index=0, loglevel="info").start()
    import threading
    from chargemesh.sinks.clickhouse_sink import ClickHouseSink
    stop = threading.Event()
    sink = ClickHouseSink(settings, group_id="test-session-sink")
    sink_thread = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    sink_thread.start()
    try:
        yield Mesh(settings, world, worker)
    finally:
        stop.set()
        sink_thread.join(30)
        sink.close()
        worker.stop()


@pytest.fixture(scope="session")
def mesh(stack_settings: Settings) -> Iterator[Mesh]:
    """The session stack with one root authority, its issuer, and a running processor worker."""
    with running_mesh(stack_settings) as session_mesh:
        yield session_mesh
