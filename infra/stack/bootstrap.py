"""Stand up a small credentialed deployment: a private stack, a root authority, an issuer.

Used by the benchmarks (the simulator and the demo plan their own governance; tests have their own
in tests/).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

from chargemesh.infra.config import Settings
from chargemesh.infra.stack.supervisor import free_ports
from chargemesh.infra.stack.worker import publisher, write_anchors
from chargemesh.streams.envelope import SignedEvent, deterministic_event_ids
from chargemesh.streams.sdk.participant import Participant

ALL_DELEGATED_ROLES = ["STATION", "VEHICLE", "FLEET_AGENT", "METER", "GRID_OPERATOR", "OBSERVER",
                       "ARBITER", "MOBILE_STATION", "RATE_AUTHORITY", "PAYMENT_AGENT"]
# The deployment's own duties (issue 15, hole 7): the processors' credential, shared by every
# worker, and the checkpoints' (a key of its own). A root delegates them to a deployment issuer.
DEPLOYMENT_ROLES = ["PROCESSOR", "CHECKPOINT"]
# A root authority holds what it delegates (issue 15, hole 1: no delegation exceeds its author).
ROOT_ROLES = ["AUTHORITY", *ALL_DELEGATED_ROLES, *DEPLOYMENT_ROLES]


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
        root.declare_authority("chargemesh root authority", jurisdictions[0], ROOT_ROLES,
                               at_ms=at_ms, jurisdictions=jurisdictions[1:]),
        root.delegate_issuer(issuer, ALL_DELEGATED_ROLES, jurisdictions, at_ms=at_ms),
        *deployment_identity(settings, root, jurisdictions[0], at_ms).events,
    ])
    return deployment


@dataclasses.dataclass(frozen=True)
class DeploymentIdentity:
    """The deployment's own credentials under one root, and the governance events issuing them
    (publish them after the root's declaration)."""

    issuer: Participant
    processor: Participant
    checkpoint: Participant
    events: list[SignedEvent]


def deployment_identity(settings: Settings, root: Participant, jurisdiction: str,
                        at_ms: int = 0, seed_secret: str | None = None) -> DeploymentIdentity:
    """The processors' PROCESSOR credential (key file ``settings.processor_key_path``, which every
    worker of the deployment shares) and the CHECKPOINT credential (its own key,
    ``settings.checkpoint_key_path``), issued by an issuer ``root`` (a trust anchor) delegates
    only those two roles. A key file already holding the credential this root issues is kept
    (another host handed the same file; a rerun of the same plan); any other is replaced."""
    issuer_id = f"{root.credential_id}:deployment-issuer"
    if seed_secret is not None:
        # A reproducible deployment (the simulator, whose root is itself seeded): the same plan
        # issues the same credentials, byte for byte, so a faulted run compares with a clean one.
        issuer = Participant.seeded(issuer_id, secret=seed_secret)
        processor = _seeded_key(settings.processor_key_path, f"{root.credential_id}:processor",
                                seed_secret)
        checkpoint = _seeded_key(settings.checkpoint_key_path,
                                 f"{root.credential_id}:checkpoint", seed_secret)
    else:
        issuer = Participant.generate(issuer_id)
        processor = _deployment_key(settings.processor_key_path,
                                    f"{root.credential_id}:processor")
        checkpoint = _deployment_key(settings.checkpoint_key_path,
                                     f"{root.credential_id}:checkpoint")
    ids = (deterministic_event_ids(f"{issuer_id}:{seed_secret}") if seed_secret is not None
           else contextlib.nullcontext())
    with ids:
        events = [root.delegate_issuer(issuer, DEPLOYMENT_ROLES, [jurisdiction], at_ms=at_ms),
                  issuer.issue_credential(processor, ["PROCESSOR"], jurisdiction, at_ms=at_ms),
                  issuer.issue_credential(checkpoint, ["CHECKPOINT"], jurisdiction,
                                          at_ms=at_ms)]
    return DeploymentIdentity(issuer, processor, checkpoint, events)


def _seeded_key(path: Path, credential_id: str, secret: str) -> Participant:
    from chargemesh.streams.sdk.key_files import write_key_file

    holder = Participant.seeded(credential_id, secret=secret)
    write_key_file(path, holder, overwrite=True)
    return holder


def _deployment_key(path: Path, credential_id: str) -> Participant:
    from chargemesh.streams.sdk.key_files import KeyFileError, load_key_file, write_key_file

    if path.is_file():
        try:
            held = load_key_file(path)
        except KeyFileError:
            held = None
        if held is not None and held.credential_id == credential_id:
            return held
    holder = Participant.generate(credential_id)
    write_key_file(path, holder, overwrite=True)
    return holder


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
        ensure_dev_identity(settings, load_key_file(root_file), at_ms)
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
                                       ROOT_ROLES, at_ms=at_ms,
                                       jurisdictions=DEV_JURISDICTIONS[1:]))
    pub.publish(root.delegate_issuer(issuer, ALL_DELEGATED_ROLES, DEV_JURISDICTIONS,
                                     at_ms=at_ms))
    pub.flush()
    marker.write_text(json.dumps({"root": root.credential_id, "issuer": issuer.credential_id,
                                  "root_public_key_hex": root.public_key.hex()}))
    ensure_dev_identity(settings, root, at_ms)
    return DevGovernance(root_file, issuer_file, created=True)


def ensure_dev_identity(settings: Settings, root: Participant, at_ms: int = 0) -> bool:
    """The dev deployment's PROCESSOR and CHECKPOINT credentials under the dev root, issued once
    per state directory (True: issued now). The deployment issuer's key is kept beside the root's
    for a rotation: issue a new PROCESSOR credential with it, then revoke the old one."""
    from chargemesh.streams.sdk.key_files import write_key_file

    folder = settings.state_dir / DEV_GOVERNANCE_DIR
    marker = folder / "deployment.json"
    if marker.exists():
        return False
    identity = deployment_identity(settings, root, DEV_JURISDICTIONS[0], at_ms)
    write_key_file(folder / "deployment-issuer.key.json", identity.issuer, overwrite=True)
    pub = publisher(settings)
    for event in identity.events:
        pub.publish(event)
    pub.flush()
    marker.write_text(json.dumps({"processor": identity.processor.credential_id,
                                  "checkpoint": identity.checkpoint.credential_id}))
    return True
