"""The participant CLI: keys, credentials and publishing signed events.

Added to the ``chargemesh`` group in :mod:`chargemesh.infra.cli.main`:

* ``chargemesh keys generate|show``: an Ed25519 key file (JSON, mode 0600) holding a credential
  id, a subject id, the public key and the private key; ``show`` prints the public part only;
* ``chargemesh credential request|issue|revoke|show``: a holder's signed request (proof of
  possession of the key), an issuer's ``CredentialIssued`` (from a request, a key file or a bare
  public key), a ``CredentialRevoked``, and a credential's chain and status as the governance
  topic has it now;
* ``chargemesh events publish``: JSON payloads in (``schemas/json_avro.py``: decimals as strings,
  bytes as hex), signed Avro out, published with the SDK publisher; ``--raw`` publishes bytes
  exactly as given, for testing what the processors reject.

Everything a command prints on stdout is JSON (one document, or one per line for several
events); progress and notes go to stderr.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click
from chargemesh.checks import ensure
from chargemesh.infra.cli.errors import ChargemeshGroup, OpsError
from chargemesh.infra.cli.events import TailPlan, tail_records
from chargemesh.infra.cli.root import settings_of
from chargemesh.infra.config import Settings
from chargemesh.infra.stack.preflight import require_broker
from chargemesh.infra.stack.worker import publisher
from chargemesh.processors.governance import ChainOk, TrustAnchor, TrustStore
from chargemesh.processors.ingress import Refused, admit_governance
from chargemesh.schemas.codec import DecodeError, catalog, to_jsonable
from chargemesh.streams.envelope import ENVELOPE_BYTES_MAX, SignedEvent, event_view, open_payload
from chargemesh.streams.keys import PUBLIC_KEY_BYTES, verify_signature
from chargemesh.streams.sdk.key_files import (
    KeyFileError,
    load_key_file,
)
from chargemesh.streams.sdk.participant import FOREVER_MS, Participant, now_ms, topic_for
from chargemesh.streams.topics import GOVERNANCE
from confluent_kafka import Message
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.console import Console
from rich.progress import Progress

REQUEST_KIND = "chargemesh.credential-request.v1"
REQUEST_DOMAIN = b"chargemesh/credential-request/v1\x00"
ISSUED_TYPE = "chargemesh.governance.v1.CredentialIssued"
REVOKED_TYPE = "chargemesh.governance.v1.CredentialRevoked"
REQUEST_FILE_BYTES_MAX = 64 * 1024
PAYLOAD_FILE_BYTES_MAX = 64 * 1024 * 1024
# Several times the envelope limit, so oversized envelopes can be published to test refusal.
RAW_BYTES_MAX = 4 * ENVELOPE_BYTES_MAX
EVENTS_PER_PUBLISH_MAX = 100_000
ATTRIBUTES_MAX = 64
GOVERNANCE_RECORDS_MAX = 1_000_000
ID_CHARS_MAX = 128


class ParticipantError(RuntimeError):
    """A request or payload that cannot be used; the message says why."""


def _enum_symbols(event_type: str, field: str) -> list[str]:
    """The symbols of an enum field (or of an array of enums) of a packaged schema."""
    parsed = catalog().current(event_type).parsed
    (schema,) = [f["type"] for f in parsed["fields"] if f["name"] == field]
    if schema.get("type") == "array":
        schema = schema["items"]
    return [s for s in schema["symbols"] if s != "UNKNOWN"]


ROLES = _enum_symbols(ISSUED_TYPE, "roles")
REVOCATION_REASONS = _enum_symbols(REVOKED_TYPE, "reason_code")


# ==== key files =================================================================================


def _participant(path: Path) -> Participant:
    try:
        return load_key_file(path)
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from exc


def _id_param(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not (0 < len(value) <= ID_CHARS_MAX and value.strip() == value):
        raise click.BadParameter(f"1 to {ID_CHARS_MAX} characters, no surrounding spaces")
    return value


# ==== credential requests =======================================================================


@dataclasses.dataclass(frozen=True)
class CredentialTerms:
    """What a credential says about its holder; the holder side of ``issue_credential``."""

    credential_id: str
    subject_id: str
    public_key: bytes
    roles: tuple[str, ...]
    jurisdiction: str
    valid_from_ms: int
    valid_until_ms: int
    attributes: tuple[tuple[str, str], ...]

    def request_fields(self) -> dict[str, Any]:
        return {"kind": REQUEST_KIND, "credential_id": self.credential_id,
                "subject_id": self.subject_id, "public_key_hex": self.public_key.hex(),
                "roles": list(self.roles), "jurisdiction": self.jurisdiction,
                "valid_from_ms": self.valid_from_ms, "valid_until_ms": self.valid_until_ms,
                "attributes": dict(self.attributes)}


def _request_bytes(fields: dict[str, Any]) -> bytes:
    return REQUEST_DOMAIN + json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def sign_request(holder: Participant, terms: CredentialTerms) -> dict[str, Any]:
    """A request document: the terms, signed by the holder's key (proof of possession)."""
    ensure(terms.public_key == holder.public_key, "a request is signed by the key it names")
    fields = terms.request_fields()
    return {**fields, "proof_hex": holder.signer.sign(_request_bytes(fields)).hex()}


def read_request(path: Path) -> CredentialTerms:
    """A request file whose proof verifies under the key it names."""
    try:
        if path.stat().st_size > REQUEST_FILE_BYTES_MAX:
            raise ParticipantError(f"{path} is larger than {REQUEST_FILE_BYTES_MAX} B")
        doc = json.loads(path.read_text())
        proof = bytes.fromhex(doc.pop("proof_hex"))
        if doc.get("kind") != REQUEST_KIND:
            raise ParticipantError(f"{path} is not a {REQUEST_KIND}")
        terms = CredentialTerms(
            str(doc["credential_id"]), str(doc["subject_id"]), bytes.fromhex(doc["public_key_hex"]),
            tuple(str(r) for r in doc["roles"]), str(doc["jurisdiction"]),
            int(doc["valid_from_ms"]), int(doc["valid_until_ms"]),
            tuple(sorted((str(k), str(v)) for k, v in dict(doc["attributes"]).items())))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ParticipantError(f"{path} is not a credential request: {exc!r}") from exc
    if terms.request_fields() != doc:
        raise ParticipantError(f"{path} has fields a request does not have")
    if not verify_signature(terms.public_key, proof, _request_bytes(doc)):
        raise ParticipantError(f"{path}: the proof does not verify under its public key "
                               "(altered, or not signed by the key's holder)")
    return terms


def parse_attributes(pairs: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    if len(pairs) > ATTRIBUTES_MAX:
        raise click.BadParameter(f"at most {ATTRIBUTES_MAX}", param_hint="--attr")
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--attr")
        out[name] = value
    return tuple(sorted(out.items()))


def _public_key(value: str) -> bytes:
    try:
        raw = bytes.fromhex(value.strip())
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise click.BadParameter(f"not an Ed25519 public key ({PUBLIC_KEY_BYTES} bytes as hex): "
                                 f"{exc}", param_hint="--holder-public-key") from exc
    return raw


def _emit_event(settings: Settings | None, event: SignedEvent, out: Path | None) -> None:
    """Print the event's JSON view; write its bytes to ``out``; publish it when settings given."""
    view = event_view(event, to_jsonable(open_payload(event)))
    if out is not None:
        out.write_bytes(event.encode())
    if settings is not None:
        topic = topic_for(event.event_type)
        _publish_all(settings, [(topic, event.body.subject_key, event.encode())])
        click.echo(f"published {event.event_id} to {topic} (key {event.body.subject_key})",
                   err=True)
    click.echo(json.dumps(view, indent=2, sort_keys=True))


@click.group(cls=ChargemeshGroup)
def credential() -> None:
    """Request, issue, revoke and inspect credentials."""


_role_option = click.option("--role", "roles", multiple=True, type=click.Choice(ROLES),
                            help="A role (repeat for several).")
_publish_option = click.option("--publish", is_flag=True,
                               help="Also publish the event to the governance topic.")
_out_option = click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path),
                           default=None, help="Also write the signed event's bytes here "
                           "(for `events publish --raw --file`).")


@credential.command("request")
@click.option("--key", "key_file", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The holder's key file: its credential id, subject id and public key.")
@_role_option
@click.option("--jurisdiction", required=True)
@click.option("--valid-from-ms", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--valid-until-ms", type=click.IntRange(min=1), default=FOREVER_MS)
@click.option("--attr", "attrs", multiple=True, help="NAME=VALUE, e.g. vin=... (repeatable).")
def credential_request(key_file: Path, roles: tuple[str, ...], jurisdiction: str,
                       valid_from_ms: int, valid_until_ms: int, attrs: tuple[str, ...]) -> None:
    """Print a signed credential request for an issuer (`credential issue --request FILE`)."""
    if not roles:
        raise click.UsageError("name at least one --role")
    holder = _participant(key_file)
    terms = CredentialTerms(holder.credential_id, holder.subject_id, holder.public_key,
                            roles, jurisdiction, valid_from_ms, valid_until_ms,
                            parse_attributes(attrs))
    click.echo(json.dumps(sign_request(holder, terms), indent=2, sort_keys=True))


def _holder_terms(request: Path | None, holder_key: Path | None, holder_public_key: str | None,
                  credential_id: str | None, subject_id: str | None) -> CredentialTerms:
    """The requested terms, or empty terms of the holder named by key file or public key."""
    given = [x for x in (request, holder_key, holder_public_key) if x is not None]
    if len(given) != 1:
        raise click.UsageError("name the holder once: --request, --holder-key or "
                               "--holder-public-key")
    if request is not None:
        try:
            return read_request(request)
        except ParticipantError as exc:
            raise click.ClickException(str(exc)) from exc
    if holder_key is not None:
        holder = _participant(holder_key)
        return CredentialTerms(holder.credential_id, holder.subject_id, holder.public_key,
                               (), "", 0, FOREVER_MS, ())
    if credential_id is None:
        raise click.UsageError("--holder-public-key needs --credential-id")
    return CredentialTerms(credential_id, subject_id or credential_id,
                           _public_key(str(holder_public_key)), (), "", 0, FOREVER_MS, ())


@credential.command("issue")
@click.option("--issuer-key", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--request", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="A holder's `credential request` (its terms are the defaults).")
@click.option("--holder-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="The holder's key file (only its public part is used).")
@click.option("--holder-public-key", default=None, help="The holder's public key, hex.")
@click.option("--credential-id", callback=_id_param, default=None)
@click.option("--subject-id", callback=_id_param, default=None)
@_role_option
@click.option("--jurisdiction", default=None)
@click.option("--valid-from-ms", type=click.IntRange(min=0), default=None)
@click.option("--valid-until-ms", type=click.IntRange(min=1), default=None)
@click.option("--attr", "attrs", multiple=True, help="NAME=VALUE (repeatable).")
@click.option("--at-ms", type=click.IntRange(min=0), default=None,
              help="occurred_at_ms of the event (default: now).")
@_publish_option
@_out_option
@click.pass_context
def credential_issue(ctx: click.Context, issuer_key: Path, request: Path | None,
                     holder_key: Path | None, holder_public_key: str | None,
                     credential_id: str | None, subject_id: str | None, roles: tuple[str, ...],
                     jurisdiction: str | None, valid_from_ms: int | None,
                     valid_until_ms: int | None, attrs: tuple[str, ...], at_ms: int | None,
                     publish: bool, out: Path | None) -> None:
    """Sign a CredentialIssued as the issuer; prints it as JSON (and publishes with --publish)."""
    issuer = _participant(issuer_key)
    base = _holder_terms(request, holder_key, holder_public_key, credential_id, subject_id)
    terms = dataclasses.replace(
        base, credential_id=credential_id or base.credential_id,
        subject_id=subject_id or base.subject_id, roles=roles or base.roles,
        jurisdiction=jurisdiction or base.jurisdiction,
        valid_from_ms=base.valid_from_ms if valid_from_ms is None else valid_from_ms,
        valid_until_ms=base.valid_until_ms if valid_until_ms is None else valid_until_ms,
        attributes=parse_attributes(attrs) if attrs else base.attributes)
    if not terms.roles or not terms.jurisdiction:
        raise click.UsageError("a credential needs --role and --jurisdiction (or a --request)")
    if terms.valid_until_ms <= terms.valid_from_ms:
        raise click.UsageError("--valid-until-ms must be after --valid-from-ms")
    event = issuer.issue_credential(terms, list(terms.roles), terms.jurisdiction,
                                    valid_from_ms=terms.valid_from_ms,
                                    valid_until_ms=terms.valid_until_ms,
                                    attributes=dict(terms.attributes),
                                    at_ms=now_ms() if at_ms is None else at_ms)
    _emit_event(settings_of(ctx) if publish else None, event, out)


@credential.command("revoke")
@click.option("--key", "key_file", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The revoker: the holder itself or anything above it in its chain.")
@click.option("--credential-id", required=True, callback=_id_param)
@click.option("--effective-at-ms", required=True, type=click.IntRange(min=0))
@click.option("--reason", required=True, type=click.Choice(REVOCATION_REASONS))
@click.option("--detail", default="", help="Free text kept with the revocation.")
@click.option("--at-ms", type=click.IntRange(min=0), default=None,
              help="occurred_at_ms of the event (default: now).")
@_publish_option
@_out_option
@click.pass_context
def credential_revoke(ctx: click.Context, key_file: Path, credential_id: str,
                      effective_at_ms: int, reason: str, detail: str, at_ms: int | None,
                      publish: bool, out: Path | None) -> None:
    """Sign a CredentialRevoked; prints it as JSON (and publishes with --publish)."""
    revoker = _participant(key_file)
    event = revoker.revoke(credential_id, effective_at_ms, reason, detail,
                           at_ms=now_ms() if at_ms is None else at_ms)
    _emit_event(settings_of(ctx) if publish else None, event, out)


# ==== credential show ===========================================================================


@dataclasses.dataclass
class GovernanceReplay:
    """The trust store as the governance topic builds it, and what it refused about one id."""

    store: TrustStore
    refused: list[dict[str, Any]]
    records: int = 0


def replay_governance(settings: Settings, about_id: str) -> GovernanceReplay:
    """Apply the whole governance topic, as a worker does, to a store of the deployment's
    anchors; keep the refusals of events that name ``about_id``."""
    try:
        anchors = TrustAnchor.load_file(settings.trust_anchors_path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OpsError(f"no usable trust anchors at {settings.trust_anchors_path} ({exc}); "
                       "see `chargemesh anchors add`") from exc
    replay = GovernanceReplay(TrustStore(anchors), [])
    plan = TailPlan(GOVERNANCE.name, from_beginning=True, limit=0, follow=False, key=None,
                    timeout_s=None)

    def apply(message: Message) -> None:
        replay.records += 1
        ensure(replay.records <= GOVERNANCE_RECORDS_MAX, "governance topic too long to replay")
        verdict = admit_governance(message.value() or b"", message.key(), replay.store)
        if isinstance(verdict, Refused) and verdict.event is not None:
            payload = _payload_or_empty(verdict.event)
            if about_id in (payload.get("credential_id"), payload.get("issuer_id"),
                            payload.get("authority_id")):
                replay.refused.append({"event_id": verdict.event.event_id,
                                       "event_type": verdict.event.event_type,
                                       "offset": message.offset(),
                                       "reason_code": verdict.rejection.reason,
                                       "detail": verdict.rejection.detail})

    tail_records(settings, plan, apply)
    return replay


def _payload_or_empty(event: SignedEvent) -> dict[str, Any]:
    try:
        payload: dict[str, Any] = open_payload(event)
    except DecodeError:  # a refused event may not decode; then it names nothing
        return {}
    return payload


def credential_status(replay: GovernanceReplay, credential_id: str,
                      at_ms: int) -> dict[str, Any]:
    """The credential's chain up to an anchor and whether it holds at ``at_ms``."""
    store = replay.store
    if credential_id not in store.principals:
        raise OpsError(f"{credential_id!r} is not on the governance topic "
                       f"({replay.records} records read)"
                       + ("; refused: " + json.dumps(replay.refused) if replay.refused else ""))
    verdict = store.resolve(credential_id, at_ms)
    links: list[dict[str, Any]] = []
    current = store.principals.get(credential_id)
    while current is not None and len(links) <= len(store.principals):
        revoked = store.revocations.get(current.principal_id)
        links.append({
            "id": current.principal_id, "kind": current.kind, "subject_id": current.subject_id,
            "public_key_hex": current.public_key.hex(), "roles": sorted(current.roles),
            "jurisdictions": sorted(current.jurisdictions),
            "valid_from_ms": current.valid_from_ms, "valid_until_ms": current.valid_until_ms,
            "trust_anchor": current.principal_id in store.anchors,
            "revoked": None if revoked is None else {
                "effective_at_ms": revoked.effective_at_ms,
                "reason_code": revoked.reason_code, "event_id": revoked.event_id},
        })
        if current.principal_id in store.anchors or not current.parent_id:
            break
        current = store.principals.get(current.parent_id)
    ok = isinstance(verdict, ChainOk)
    return {"credential_id": credential_id, "at_ms": at_ms,
            "status": "VALID" if ok else verdict.reason,
            "detail": "" if ok else verdict.detail,
            "root_authority_id": verdict.root_authority_id if ok else "",
            "attributes": dict(store.principals[credential_id].attributes),
            "chain": links, "refused_events": replay.refused}


@credential.command("show")
@click.argument("credential_id")
@click.option("--at-ms", type=click.IntRange(min=0), default=None,
              help="Status as of this time (default: now).")
@click.pass_context
def credential_show(ctx: click.Context, credential_id: str, at_ms: int | None) -> None:
    """A credential's chain to a trust anchor, validity and revocation, from the governance
    topic (as JSON; "status" is VALID or the reason code an event of it would be refused with)."""
    settings = settings_of(ctx)
    try:
        replay = replay_governance(settings, credential_id)
        status = credential_status(replay, credential_id, now_ms() if at_ms is None else at_ms)
    except OpsError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(status, indent=2, sort_keys=True))


def _publish_all(settings: Settings, records: list[tuple[str, str, bytes]]) -> None:
    """Publish (topic, key, value) records in order with a progress bar past one record."""
    require_broker(settings)
    pub = publisher(settings)
    if len(records) == 1:
        pub.publish_raw(*records[0])
    else:
        with Progress(console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task("publishing", total=len(records))
            for topic, key, value in records:
                pub.publish_raw(topic, key, value)
                progress.advance(task)
    try:
        pub.flush()
    except RuntimeError as exc:
        raise click.ClickException(f"publishing to {settings.bootstrap_servers} failed ({exc}): "
                                   "is the stack up (`chargemesh status`)?") from exc
