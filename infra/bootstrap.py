"""Stand up a small credentialed deployment: a private stack, a root authority, an issuer.

Used by the main job, the simulator and the benchmarks (tests have their own in tests/).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from chargemesh.infra.config import Settings
from chargemesh.infra.processes import free_ports
from chargemesh.infra.runtime import publisher, write_anchors
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk import Participant

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
