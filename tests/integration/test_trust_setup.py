"""Issue 15 hole 8 on the real stack: trust set-up is explicit, and anchors change in running
workers.

One private stack. `up` in the production profile creates no anchor and warns that there is
none; `up` in the dev profile creates the development root and says so (its key files, for
development only). A worker runs; a station credentialed under the dev root is admitted. Then
`chargemesh anchors add` of another root takes effect in the running worker (its credentials are
admitted without a restart) and `chargemesh anchors remove` of the dev root too: the dev
station's next heartbeat is refused (UNKNOWN_CREDENTIAL: rebuilt without the anchor, the dev
root's declaration no longer holds, so nothing under it exists) and the dev root declaring itself
again is refused UNRECOGNISED_AUTHORITY, on the rejections topic and in ClickHouse, neither in
the admitted log; the other root's station is still admitted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from chargemesh.infra.config import Settings
from chargemesh.infra.stack.bootstrap import DEV_GOVERNANCE_DIR, DEV_ROOT_ID, ROOT_ROLES
from chargemesh.infra.stack.worker import (TopicReader, WorkerProcess, event_ids, log_tail,
                                           publisher)
from chargemesh.processors.governance import TrustAnchor
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk.key_files import load_key_file
from chargemesh.streams.sdk.participant import Participant, now_ms
from chargemesh.streams.topics import ADMITTED, GOVERNANCE, REJECTIONS

from tests.conftest import Mesh
from tests.support.world import make_world

pytestmark = pytest.mark.integration
CHARGEMESH = str(Path(sys.executable).parent / "chargemesh")
HEARTBEAT = "chargemesh.capacity.v1.StationHeartbeat"
RELOADED = "trust anchors changed"


def heartbeat(station: Participant) -> SignedEvent:
    at = now_ms()
    return station.sign(HEARTBEAT, {"station_id": station.subject_id, "at_ms": at},
                        subject_key=station.subject_id, occurred_at_ms=at)


def wait_reloads(worker: WorkerProcess, count: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if worker.log_path.read_text(errors="replace").count(RELOADED) >= count:
            return
        time.sleep(0.2)
    pytest.fail(f"the worker did not reload its anchors:\n{log_tail(worker.log_path)}")


def test_up_says_how_trust_is_set_up_and_anchor_changes_reach_running_workers(
        new_stack_settings: Callable[[], Settings]) -> None:
    settings = new_stack_settings()
    env = dict(os.environ, **settings.as_environ())

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([CHARGEMESH, *args], env=dict(env, **extra), capture_output=True,
                              text=True, timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    worker = None
    stop = threading.Event()
    try:
        # production: nothing trusted silently, and `up` says so
        production = run("up", CHARGEMESH_PROFILE="production")
        assert "trust: WARNING: production profile, no trust anchors" in production.stdout
        assert "chargemesh anchors add --authority-id ID" in production.stdout
        assert not settings.trust_anchors_path.exists()
        assert not (settings.state_dir / DEV_GOVERNANCE_DIR).exists()
        # dev (the embedded stack's default): the development root, said in one line
        dev = run("up")
        folder = settings.state_dir / DEV_GOVERNANCE_DIR
        [line] = [s for s in dev.stdout.splitlines() if s.startswith("trust: DEV PROFILE")]
        assert f"development root anchor {DEV_ROOT_ID} created" in line
        assert str(folder / "root.key.json") in line and "for development only" in line
        assert [a.authority_id for a in TrustAnchor.load_file(settings.trust_anchors_path)] == [
            DEV_ROOT_ID]
        again = run("up", CHARGEMESH_PROFILE="production")  # switching profiles: a warning
        assert f"anchors remove --authority-id {DEV_ROOT_ID}" in again.stdout

        from chargemesh.sinks.clickhouse_sink import ClickHouseSink

        sink = ClickHouseSink(settings, group_id="trust-setup-sink")
        threading.Thread(target=sink.run, args=(stop,), daemon=True).start()
        worker = WorkerProcess(settings, index=0, loglevel="info").start()
        pub = publisher(settings)
        dev_issuer = load_key_file(folder / "issuer.key.json")
        dev_station = Participant.generate("ts-dev-station", "ts-dev-station")
        first = heartbeat(dev_station)
        for event in (dev_issuer.issue_credential(dev_station, ["STATION"], "US-CA",
                                                  at_ms=now_ms()), first):
            pub.publish(event)
        pub.flush()
        admitted = TopicReader(settings, ADMITTED.name)
        admitted.wait_for(lambda rs: first.event_id in event_ids(rs), timeout_s=60,
                          workers=(worker,))

        # `anchors add` while the worker runs: another root's credentials are admitted
        other_root = Participant.generate("authority:ts-other")
        other_issuer = Participant.generate("issuer:ts-other-1")
        other_station = Participant.generate("ts-other-station", "ts-other-station")
        run("anchors", "add", "--authority-id", other_root.credential_id,
            "--public-key-hex", other_root.public_key.hex())
        wait_reloads(worker, 1)
        for event in (other_root.declare_authority("other root", "US-CA", ROOT_ROLES,
                                                   at_ms=now_ms()),
                      other_root.delegate_issuer(other_issuer, ["STATION"], ["US-CA"],
                                                 at_ms=now_ms()),
                      other_issuer.issue_credential(other_station, ["STATION"], "US-CA",
                                                    at_ms=now_ms())):
            pub.publish(event)
        pub.flush()

        # `anchors remove` of the dev root while the worker runs
        removed = run("anchors", "remove", "--authority-id", DEV_ROOT_ID)
        assert "running workers rebuild their trust store" in removed.stdout
        wait_reloads(worker, 2)
        dev_root = load_key_file(folder / "root.key.json")
        redeclared = dev_root.declare_authority("chargemesh dev root authority", "US-CA",
                                                ROOT_ROLES, at_ms=now_ms())
        late = heartbeat(dev_station)
        attack = {late.event_id: "UNKNOWN_CREDENTIAL", redeclared.event_id:
                  "UNRECOGNISED_AUTHORITY"}
        twin = heartbeat(other_station)
        for event in (late, redeclared, twin):
            pub.publish(event)
        pub.flush()

        rejections = TopicReader(settings, REJECTIONS.name)
        try:
            rejections.wait_for(lambda rs: set(attack) <= {r.rejection()["event_id"]
                                                          for r in rs},
                                timeout_s=60, workers=(worker,))
            admitted.wait_for(lambda rs: twin.event_id in event_ids(rs), timeout_s=60,
                              workers=(worker,))
        except TimeoutError:
            pytest.fail("worker log:\n" + log_tail(worker.log_path))
        found = {r.rejection()["event_id"]: r.rejection()["reason_code"]
                 for r in rejections.records if r.rejection()["event_id"] in attack}
        assert found == attack
        assert not set(attack) & event_ids(admitted.records)
        gov = [r for r in admitted.records
               if r.headers.get("source_topic") == GOVERNANCE.name.encode()]
        assert any(r.event().body.author_credential_id == other_root.credential_id for r in gov)
        rejections.close()
        admitted.close()
        clickhouse = Mesh(settings, make_world(), worker)  # its query helpers only
        rows = clickhouse.wait_rows("SELECT event_id, reason_code FROM rejections FINAL "
                                    "WHERE event_id IN %(ids)s", {"ids": tuple(attack)},
                                    count=len(attack), timeout_s=60)
        assert dict(rows) == attack
    finally:
        stop.set()
        if worker is not None:
            worker.stop()
        subprocess.run([CHARGEMESH, "down"], env=env, capture_output=True, timeout=120)
