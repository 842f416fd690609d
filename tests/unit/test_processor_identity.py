"""Issue 15, hole 7: the processors' identity is a governance-issued PROCESSOR credential.

Pure: a trust store built from the governance events, routed records admitted or refused by
``ingress.admit`` (what every worker does with another worker's routed record), and the audit's
checkpoint rule.
"""

from __future__ import annotations

from chargemesh.processors.audit import checkpoints as checkpointer
from chargemesh.processors.audit.checkpoints import LogRecord
from chargemesh.processors.audit.replay import AuditSource, audit
from chargemesh.processors.ingress import Admitted, Refused, admit, admit_governance
from chargemesh.processors.ledger import revocation
from chargemesh.processors.reasons import Reason
from chargemesh.streams import topics
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.keys import Signer
from chargemesh.streams.sdk.participant import Participant

from tests.support.world import T0_MS, World, make_world

PARTITIONS = 4


def routed(signer: Signer, world: World, tag: str, at_ms: int) -> SignedEvent:
    """A RevocationRouted record signed by ``signer`` (a revocation of a throwaway credential,
    fanned out as any worker of the deployment would)."""
    ghost = world.credential(f"ghost-{tag}", ["VEHICLE"])
    revoked = world.issuer.revoke(ghost.credential_id, effective_at_ms=at_ms, at_ms=at_ms)
    store = world.store()
    out = revocation.fan_out(revoked, {"credential_id": ghost.credential_id,
                                       "effective_at_ms": at_ms}, store, signer, PARTITIONS)
    from chargemesh.streams.envelope import open_envelope

    return open_envelope(out[0].value)


def verdict(event: SignedEvent, world: World) -> Admitted | Refused:
    return admit(event.encode(), event.body.subject_key.encode(), topics.MARKET.name,
                 world.store())


def test_a_second_worker_with_the_shared_credential_is_admitted_a_host_key_is_not() -> None:
    world = make_world()
    processor = world.processor_credential("dep:processor")
    # Another host's worker, handed the same key file: the same credential, the same key.
    second_host = Signer.from_seed("dep:processor",
                                   processor.signer.private_key.private_bytes_raw())
    assert isinstance(verdict(routed(second_host, world, "a", T0_MS + 1), world), Admitted)
    # A key one host generated for itself (the old behaviour): nobody issued it.
    own = Signer.generate("mesh:processor")
    refused = verdict(routed(own, world, "b", T0_MS + 1), world)
    assert isinstance(refused, Refused) and refused.rejection.reason == Reason.UNKNOWN_CREDENTIAL
    # A stolen credential id with another key does not verify.
    forged = Signer.generate("dep:processor")
    refused = verdict(routed(forged, world, "c", T0_MS + 1), world)
    assert isinstance(refused, Refused) and refused.rejection.reason == Reason.BAD_SIGNATURE


def test_a_participant_role_cannot_sign_as_the_processors() -> None:
    world = make_world()
    station = world.credential("st-x", ["STATION"])
    refused = verdict(routed(station.signer, world, "a", T0_MS + 1), world)
    assert isinstance(refused, Refused) and refused.rejection.reason == Reason.ROLE_NOT_PERMITTED


def test_rotation_new_accepted_old_refused_after_its_revocation() -> None:
    world = make_world()
    old = world.processor_credential("dep:processor-1")
    new = world.processor_credential("dep:processor-2")
    cut_ms = T0_MS + 1_000
    deployment_issuer = Participant.seeded("deployment-issuer", secret="tests")
    world.governance.append(deployment_issuer.revoke(old.credential_id, effective_at_ms=cut_ms,
                                                     reason_code="SUPERSEDED", at_ms=cut_ms))
    before = verdict(routed(old.signer, world, "a", cut_ms - 1), world)
    after = verdict(routed(old.signer, world, "b", cut_ms), world)
    by_new = verdict(routed(new.signer, world, "c", cut_ms), world)
    assert isinstance(before, Admitted)
    assert isinstance(after, Refused) and after.rejection.reason == Reason.CREDENTIAL_REVOKED
    assert isinstance(by_new, Admitted)


def test_one_credential_or_one_key_for_both_duties_is_refused() -> None:
    world = make_world()
    processor = world.processor_credential("dep:processor")
    store = world.store()
    issuer = Participant.seeded("deployment-issuer", secret="tests")
    both = Participant.generate("dep:both")
    same_key = Participant(Signer.from_seed("dep:checkpoint",
                                            processor.signer.private_key.private_bytes_raw()),
                           "dep:checkpoint")
    own_key = Participant.generate("dep:checkpoint-2")
    for holder, roles in ((both, ["PROCESSOR", "CHECKPOINT"]), (same_key, ["CHECKPOINT"])):
        event = issuer.issue_credential(holder, roles, "US-CA", at_ms=T0_MS)
        got = admit_governance(event.encode(), event.body.subject_key.encode(), store)
        assert isinstance(got, Refused), roles
        assert got.rejection.reason == Reason.DUTIES_NOT_SEPARATED
        assert holder.credential_id not in store.principals
    event = issuer.issue_credential(own_key, ["CHECKPOINT"], "US-CA", at_ms=T0_MS)
    assert isinstance(admit_governance(event.encode(), event.body.subject_key.encode(), store),
                      Admitted)


def _checkpoint_source(world: World, signer: Signer) -> AuditSource:
    governance = [LogRecord(topics.GOVERNANCE.name, 0, i, e.body.subject_key.encode(), e.encode())
                  for i, e in enumerate(world.governance)]
    log = [LogRecord(topics.DECISIONS.name, 0, 0, b"k", b"a decision's bytes")]
    payload = checkpointer.checkpoint_payload(topics.DECISIONS.name, 0, log, None, T0_MS + 5)
    assert payload is not None
    cp = checkpointer.seal_checkpoint(signer, payload)
    checkpoints = [LogRecord(topics.CHECKPOINTS.name, 0, 0, cp.body.subject_key.encode(),
                             cp.encode())]
    return AuditSource("test", governance, True, log, checkpoints)


def test_the_audit_refuses_a_checkpoint_signed_by_the_processors_key() -> None:
    world = make_world()
    processor = world.processor_credential("dep:processor")
    checkpoint = world.processor_credential("dep:checkpoint", role="CHECKPOINT")
    good = audit(_checkpoint_source(world, checkpoint.signer), world.anchors(), "auth-root")
    assert good.ok and good.checkpoints_verified == 1, good.findings
    bad = audit(_checkpoint_source(world, processor.signer), world.anchors(), "auth-root")
    assert [f.code for f in bad.findings] == [Reason.DUTIES_NOT_SEPARATED]
    assert bad.checkpoints_verified == 0
