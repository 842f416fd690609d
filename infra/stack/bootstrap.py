"""Stand up a small credentialed deployment: a private stack, a root authority, an issuer.

Used by the benchmarks (the simulator and the demo plan their own governance; tests have their own
in tests/).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from chargemesh.infra.config import Settings
from chargemesh.infra.stack.supervisor import free_ports
from chargemesh.infra.stack.worker import publisher, write_anchors
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk.participant import Participant

ALL_DELEGATED_ROLES = ["STATION", "VEHICLE", "FLEET_AGENT", "METER", "GRID_OPERATOR", "OBSERVER",
                       "ARBITER", "MOBILE_STATION", "RATE_AUTHORITY"]


def private_settings(state_dir: Path, session_timeout_ms: int = 6000,
                     partitions: int = 4) -> Settings:
    """Settings of a stack of its own: free loopback ports, everything embedded."""
    kafka, clickhouse, clickhouse_http, worker_web = free_ports(4)
    return Settings(state_dir=state_dir, kafka_port=kafka, clickhouse_port=clickhouse,
                    clickhouse_http_port=clickhouse_http, worker_web_port=worker_web,
                    session_timeout_ms=session_timeout_ms, partitions=partitions)


@dataclasses.dataclass
class Deployment:
    settings: Settings
    root: Participant
    issuer: Participant
    secret: str

    def participant(self, credential_id: str, subject_id: str | None = None) -> Participant:
        return Participant.seeded(credential_id, subject_id, secret=self.secret)

    def credential(self, credential_id: str, roles: list[str], jurisdiction: str,
                   subject_id: str | None = None,
                   at_ms: int = 0) -> tuple[Participant, SignedEvent]:
        holder = self.participant(credential_id, subject_id)
        return holder, self.issuer.issue_credential(holder, roles, jurisdiction, at_ms=at_ms)

    def publish(self, events: list[SignedEvent]) -> None:
        pub = publisher(self.settings)
        for event in events:
            pub.publish(event)
        pub.flush()


def deploy(settings: Settings, jurisdictions: list[str], secret: str = "chargemesh-demo",
           at_ms: int = 0) -> Deployment:
    """Write the trust anchors and publish the root authority and its issuer."""
    root = Participant.seeded("authority:root", secret=secret)
    issuer = Participant.seeded("issuer:root-1", secret=secret)
    write_anchors(settings, root)
    deployment = Deployment(settings, root, issuer, secret)
    deployment.publish([
        root.declare_authority("chargemesh root authority", jurisdictions[0],
                               ["AUTHORITY", "RATE_AUTHORITY"], at_ms=at_ms),
        root.delegate_issuer(issuer, ALL_DELEGATED_ROLES, jurisdictions, at_ms=at_ms),
    ])
    return deployment


DEV_GOVERNANCE_DIR = "dev-governance"
DEV_ROOT_ID = "authority:dev-root"
DEV_ISSUER_ID = "issuer:dev-root-1"
DEV_JURISDICTIONS = ["US-CA", "DE-BY"]


@dataclasses.dataclass(frozen=True)
class DevGovernance:
    root_key_file: Path
    issuer_key_file: Path
    created: bool


def ensure_dev_governance(settings: Settings, at_ms: int = 0) -> DevGovernance:
    """The embedded stack's development governance root, created once per state directory.

    Fresh random keys for a root authority and its issuer (key files, mode 0600, usable with
    ``chargemesh credential issue --issuer-key``), the root added to the trust anchors, and the
    authority declaration and issuer delegation published to the governance topic. A second call
    finds the marker file and changes nothing.
    """
    from chargemesh.infra.cli.anchors import add_anchor
    from chargemesh.streams.sdk.key_files import load_key_file, write_key_file

    folder = settings.state_dir / DEV_GOVERNANCE_DIR
    root_file, issuer_file = folder / "root.key.json", folder / "issuer.key.json"
    marker = folder / "published.json"
    if marker.exists():
        return DevGovernance(root_file, issuer_file, created=False)
    if root_file.exists() and issuer_file.exists():  # an earlier run stopped before publishing
        root, issuer = load_key_file(root_file), load_key_file(issuer_file)
    else:
        root, issuer = Participant.generate(DEV_ROOT_ID), Participant.generate(DEV_ISSUER_ID)
        write_key_file(root_file, root, overwrite=True)
        write_key_file(issuer_file, issuer, overwrite=True)
    add_anchor(settings.trust_anchors_path, root.credential_id, root.public_key, replace=True)
    pub = publisher(settings)
    pub.publish(root.declare_authority("chargemesh dev root authority", DEV_JURISDICTIONS[0],
                                       ["AUTHORITY", "RATE_AUTHORITY"], at_ms=at_ms))
    pub.publish(root.delegate_issuer(issuer, ALL_DELEGATED_ROLES, DEV_JURISDICTIONS,
                                     at_ms=at_ms))
    pub.flush()
    marker.write_text(json.dumps({"root": root.credential_id, "issuer": issuer.credential_id,
                                  "root_public_key_hex": root.public_key.hex()}))
    return DevGovernance(root_file, issuer_file, created=True)
