"""`chargemesh up` on an embedded stack creates a development governance root once."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from chargemesh.infra.stack.bootstrap import DEV_GOVERNANCE_DIR, DEV_ISSUER_ID, DEV_ROOT_ID
from chargemesh.infra.config import Settings
from chargemesh.infra.stack.worker import TopicReader
from chargemesh.processors.governance import TrustAnchor, TrustStore
from chargemesh.processors.ingress import Admitted, admit_governance
from chargemesh.streams.topics import GOVERNANCE

pytestmark = pytest.mark.integration
CHARGEMESH = str(Path(sys.executable).parent / "chargemesh")


def test_up_creates_a_dev_root_once_and_its_issuer_can_issue(
        new_stack_settings: Callable[[], Settings]) -> None:
    settings = new_stack_settings()
    env = dict(os.environ, **settings.as_environ())

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CHARGEMESH, *args], env=env, capture_output=True, text=True,
                              timeout=120)
    try:
        first = run("up")
        assert first.returncode == 0, first.stderr
        assert f"development root anchor {DEV_ROOT_ID} created" in first.stdout
        folder = settings.state_dir / DEV_GOVERNANCE_DIR
        issuer_file = folder / "issuer.key.json"
        assert stat.S_IMODE(issuer_file.stat().st_mode) == 0o600
        anchors = json.loads(settings.trust_anchors_path.read_text())
        root_key = next(a["public_key_hex"] for a in anchors if a["authority_id"] == DEV_ROOT_ID)
        again = run("up")
        assert again.returncode == 0 and f"root anchor {DEV_ROOT_ID} in place" in again.stdout

        reader = TopicReader(settings, GOVERNANCE.name)
        records = reader.wait_for(lambda rs: len(rs) >= 2, timeout_s=30)
        reader.poll(1.0)
        reader.close()
        # The root, its issuer, and the deployment's own identity (hole 7): a deployment issuer,
        # the processors' PROCESSOR credential and the CHECKPOINT credential; once.
        assert len(reader.records) == 5, "the second `up` published nothing"
        store = TrustStore([TrustAnchor(DEV_ROOT_ID, bytes.fromhex(root_key))])
        verdicts = [admit_governance(r.value, r.key, store) for r in records]
        assert all(isinstance(v, Admitted) for v in verdicts), verdicts
        assert store.resolve(DEV_ISSUER_ID, 1).chain == (DEV_ISSUER_ID, DEV_ROOT_ID)
        processor = json.loads(settings.processor_key_path.read_text())["credential_id"]
        assert store.resolve(processor, 1).principal.roles == frozenset({"PROCESSOR"})

        issued = run("credential", "issue", "--issuer-key", str(issuer_file),
                     "--holder-public-key", "11" * 32, "--credential-id", "dev-station-1",
                     "--role", "STATION", "--jurisdiction", "US-CA")
        assert issued.returncode == 0, issued.stderr
        assert "dev-station-1" in issued.stdout
    finally:
        run("down")
