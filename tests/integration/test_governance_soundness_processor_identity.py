"""Issue 15, hole 7 on the real stack: the processors' identity is a governance-issued PROCESSOR
credential, shared by every worker of the deployment and rotated through governance.

Attacks: a routed record signed by a key one host generated for itself (as every worker used to
do), a routed record by a PROCESSOR credential after its revocation, and a CHECKPOINT credential
issued for the processors' own key. Each is refused with its reason on
``chargemesh.rejections.v1`` and in ClickHouse ``rejections``, leaves nothing in the admitted log
(or the trust store), while its legitimate twin is admitted.
"""

from __future__ import annotations

import uuid

import pytest
from chargemesh.infra.stack.worker import TopicReader, publisher
from chargemesh.processors.governance import TrustStore
from chargemesh.processors.ledger import revocation
from chargemesh.processors.reasons import Reason
from chargemesh.processors.records import expected_partition
from chargemesh.streams import topics
from chargemesh.streams.envelope import SignedEvent, open_envelope
from chargemesh.streams.keys import Signer
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.sdk.participant import Participant, now_ms

from tests.conftest import Mesh
from tests.support.market import open_market

pytestmark = pytest.mark.integration
WAIT_S = 60.0


@pytest.fixture(scope="module")
def partition(mesh: Mesh) -> int:
    """A market partition with a station ledger on it (a routed revocation reaches, and is
    copied to the admitted log by, the stations of its partition)."""
    market = open_market(mesh, f"pid-{uuid.uuid4().hex[:6]}", now_ms(),
                         [sdk.connector("c1", 50_000)])
    return expected_partition(market.station_id.encode(), mesh.settings.partitions)


def routed(mesh: Mesh, signer: Signer, tag: str, at_ms: int,
           partition: int) -> tuple[str, SignedEvent]:
    """A RevocationRouted record for ``partition``, signed by ``signer``: a revocation of a
    throwaway credential that nothing rests on, fanned out as a worker would."""
    revoked = mesh.world.issuer.revoke(f"ghost-{tag}", effective_at_ms=at_ms, at_ms=at_ms)
    out = revocation.fan_out(revoked, {"credential_id": f"ghost-{tag}",
                                       "effective_at_ms": at_ms},
                             TrustStore(mesh.world.anchors()), signer, mesh.settings.partitions)
    return out[partition].key.decode(), open_envelope(out[partition].value)


def publish_raw(mesh: Mesh, *records: tuple[str, SignedEvent]) -> None:
    pub = publisher(mesh.settings)
    for key, event in records:
        pub.publish_raw(topics.MARKET.name, key, event.encode())
    pub.flush()


def event_ids(reader: TopicReader) -> set[str]:
    out = set()
    for record in reader.records:
        try:
            out.add(open_envelope(record.value).event_id)
        except Exception:  # noqa: BLE001, S112 - other tests' hostile bytes
            continue
    return out


def wait_admitted(mesh: Mesh, admitted: list[str]) -> set[str]:
    reader = mesh.reader(topics.ADMITTED.name)
    try:
        reader.wait_for(lambda _r: set(admitted) <= event_ids(reader), WAIT_S, (mesh.worker,))
        return event_ids(reader)
    finally:
        reader.close()


def wait_rejected(mesh: Mesh, event_id: str, reason: Reason) -> None:
    """On the rejections topic and in ClickHouse ``rejections``, with ``reason``."""
    reader = mesh.reader(topics.REJECTIONS.name)
    try:
        records = reader.wait_for(lambda rs: any(
            r.rejection()["event_id"] == event_id for r in rs), WAIT_S, (mesh.worker,))
        reasons = {r.rejection()["reason_code"] for r in records
                   if r.rejection()["event_id"] == event_id}
    finally:
        reader.close()
    assert reasons == {reason.value}
    rows = mesh.wait_rows("SELECT reason_code FROM rejections FINAL WHERE event_id = %(e)s",
                          {"e": event_id})
    assert {row[0] for row in rows} == {reason.value}


def test_a_second_worker_with_the_shared_credential_is_admitted_a_host_key_is_refused(
        mesh: Mesh, partition: int) -> None:
    tag = uuid.uuid4().hex[:8]
    # Another host's worker loads the same key file: the deployment's PROCESSOR credential.
    second_host = Signer.load(mesh.settings.processor_key_path)
    # The old behaviour: a key generated on first start where it was missing, issued by nobody.
    own_key = Signer.generate(f"mesh:processor-{tag}")
    good = routed(mesh, second_host, f"{tag}-a", now_ms(), partition)
    bad = routed(mesh, own_key, f"{tag}-b", now_ms(), partition)
    publish_raw(mesh, bad, good)
    wait_rejected(mesh, bad[1].event_id, Reason.UNKNOWN_CREDENTIAL)
    admitted = wait_admitted(mesh, [good[1].event_id])
    assert bad[1].event_id not in admitted


def test_rotation_the_revoked_credential_is_refused_the_new_one_admitted(
        mesh: Mesh, partition: int) -> None:
    tag = uuid.uuid4().hex[:8]
    world = mesh.world
    old = world.processor_credential(f"processor:{tag}-1")
    new = world.processor_credential(f"processor:{tag}-2")
    mesh.publish(*world.governance)
    world.governance.clear()
    before = routed(mesh, old.signer, f"{tag}-a", now_ms(), partition)
    publish_raw(mesh, before)
    wait_admitted(mesh, [before[1].event_id])  # in force: admitted
    cut_ms = now_ms()
    deployment_issuer = Participant.seeded("deployment-issuer", secret="tests")
    mesh.publish(deployment_issuer.revoke(old.credential_id, effective_at_ms=cut_ms,
                                          reason_code="SUPERSEDED", at_ms=cut_ms))
    after = routed(mesh, old.signer, f"{tag}-b", cut_ms + 1, partition)
    by_new = routed(mesh, new.signer, f"{tag}-c", cut_ms + 1, partition)
    publish_raw(mesh, after, by_new)
    wait_rejected(mesh, after[1].event_id, Reason.CREDENTIAL_REVOKED)
    admitted = wait_admitted(mesh, [by_new[1].event_id])
    assert after[1].event_id not in admitted


def test_a_checkpoint_credential_for_the_processors_key_is_refused(mesh: Mesh) -> None:
    tag = uuid.uuid4().hex[:8]
    world = mesh.world
    processors = Signer.load(mesh.settings.processor_key_path)
    world.processor_credential(f"processor:{tag}-x")  # (the deployment issuer's delegation)
    mesh.publish(*world.governance)
    world.governance.clear()
    issuer = Participant.seeded("deployment-issuer", secret="tests")
    same_key = Participant(Signer.from_seed(f"checkpoint:{tag}-same",
                                            processors.private_key.private_bytes_raw()),
                           f"checkpoint:{tag}-same")
    own_key = Participant.generate(f"checkpoint:{tag}-own")
    attack = issuer.issue_credential(same_key, ["CHECKPOINT"], "US-CA", at_ms=now_ms())
    twin = issuer.issue_credential(own_key, ["CHECKPOINT"], "US-CA", at_ms=now_ms())
    mesh.publish(attack, twin)
    wait_rejected(mesh, attack.event_id, Reason.DUTIES_NOT_SEPARATED)
    admitted = wait_admitted(mesh, [twin.event_id])
    assert attack.event_id not in admitted
    # The trust store a replay of the governance topic builds holds the twin, not the attack.
    reader = mesh.reader(topics.GOVERNANCE.name)
    try:
        reader.wait_for(lambda rs: twin.event_id in event_ids(reader), WAIT_S)
        store = TrustStore(world.anchors())
        from chargemesh.processors.ingress import admit_governance

        for record in sorted(reader.records, key=lambda r: r.offset):
            admit_governance(record.value, record.key, store)
    finally:
        reader.close()
    assert own_key.credential_id in store.principals
    assert same_key.credential_id not in store.principals
