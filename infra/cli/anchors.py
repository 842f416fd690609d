"""``chargemesh anchors add|remove|list``: the trust anchors file every worker loads at start
and watches while it runs (a change rebuilds its trust store from the governance log with the
new anchors: ``processors/runtime/follower.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from chargemesh.checks import ensure
from chargemesh.infra.cli.errors import ChargemeshGroup, OpsError
from chargemesh.infra.cli.root import settings_of
from chargemesh.infra.cli.tables import out, print_table
from chargemesh.infra.config import Settings
from chargemesh.processors.governance import TrustAnchor
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.table import Table

ED25519_PUBLIC_KEY_BYTES = 32
ANCHORS_MAX = 1_000


def read_anchor_entries(path: Path) -> list[dict[str, str]]:
    """The anchors file as written (``TrustAnchor.load_file``'s format); [] if there is none."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, json.JSONDecodeError) as exc:
        raise OpsError(f"{path} is not a trust anchors file: {exc}") from exc
    valid = isinstance(raw, list) and all(
        isinstance(item, dict)
        and isinstance(item.get("authority_id"), str)
        and isinstance(item.get("public_key_hex"), str)
        for item in raw
    )
    if not valid:
        raise OpsError(
            f"{path} is not a trust anchors file: expected a JSON list of "
            '{"authority_id": ..., "public_key_hex": ...}'
        )
    return [{"authority_id": i["authority_id"], "public_key_hex": i["public_key_hex"]} for i in raw]


def add_anchor(path: Path, authority_id: str, public_key: bytes, replace: bool) -> str:
    """Add (or with ``replace``, re-key) one anchor; returns "added", "replaced" or "unchanged"."""
    ensure(len(public_key) == ED25519_PUBLIC_KEY_BYTES, "anchor keys are Ed25519 public keys")
    entries = read_anchor_entries(path)
    key_hex = public_key.hex()
    outcome = "added"
    for entry in entries:
        if entry["authority_id"] != authority_id:
            continue
        if entry["public_key_hex"].lower() == key_hex:
            return "unchanged"
        if not replace:
            raise OpsError(
                f"{authority_id} is already a trust anchor in {path} with another key "
                f"({entry['public_key_hex']}); pass --replace to re-key it"
            )
        entry["public_key_hex"] = key_hex
        outcome = "replaced"
    if outcome == "added":
        if len(entries) >= ANCHORS_MAX:
            raise OpsError(f"{path} already lists {ANCHORS_MAX} anchors")
        entries.append({"authority_id": authority_id, "public_key_hex": key_hex})
    _write_entries(path, entries)
    return outcome


def remove_anchor(path: Path, authority_id: str) -> None:
    """Remove one anchor; an OpsError if it is not listed."""
    entries = read_anchor_entries(path)
    kept = [e for e in entries if e["authority_id"] != authority_id]
    if len(kept) == len(entries):
        listed = ", ".join(e["authority_id"] for e in entries) or "none"
        raise OpsError(f"{authority_id} is not a trust anchor in {path} (listed: {listed})")
    _write_entries(path, kept)


def _write_entries(path: Path, entries: list[dict[str, str]]) -> None:
    """Replace the file whole (a new file under the name): a worker never reads half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(entries, indent=2) + "\n")
    tmp.replace(path)


def check_anchors(settings: Settings) -> int:
    """Fail clearly unless the workers' trust anchors file exists and lists anchors."""
    path = settings.trust_anchors_path
    if not path.is_file():
        raise OpsError(
            f"no trust anchors at {path}: workers trust no authority without them. Declare "
            "the deployment's root authority first:\n"
            "  chargemesh anchors add --authority-id ID --public-key-hex HEX\n"
            "(or point CHARGEMESH_TRUST_ANCHORS_FILE at an existing anchors file)"
        )
    try:
        anchors = TrustAnchor.load_file(path)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise OpsError(f"{path} is not a trust anchors file ({exc!r}); see `anchors add`") from exc
    if not anchors:
        raise OpsError(f"{path} lists no trust anchors; see `chargemesh anchors add`")
    return len(anchors)


def _public_key_param(_ctx: click.Context, _param: click.Parameter, value: str) -> bytes:
    try:
        raw = bytes.fromhex(value.strip())
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise click.BadParameter(
            f"not a hex Ed25519 public key ({ED25519_PUBLIC_KEY_BYTES} bytes, "
            f"{2 * ED25519_PUBLIC_KEY_BYTES} hex digits): {exc}"
        ) from exc
    return raw


@click.group(cls=ChargemeshGroup)
def anchors() -> None:
    """The trust anchors (root authorities) the processor workers start from."""


@anchors.command("add")
@click.option("--authority-id", required=True, help="The root authority's id.")
@click.option(
    "--public-key-hex",
    "public_key",
    required=True,
    callback=_public_key_param,
    help="Its Ed25519 public key, 64 hex digits.",
)
@click.option("--replace", is_flag=True, help="Re-key an anchor that is already listed.")
@click.pass_context
def anchors_add(ctx: click.Context, authority_id: str, public_key: bytes, replace: bool) -> None:
    """Add a trust anchor to the anchors file (<state_dir>/trust_anchors.json by default)."""
    if not authority_id.strip():
        raise click.BadParameter("must not be empty", param_hint="--authority-id")
    path = settings_of(ctx).trust_anchors_path
    try:
        outcome = add_anchor(path, authority_id, public_key, replace)
    except OpsError as exc:
        raise click.ClickException(str(exc)) from exc
    out().print(f"{authority_id}: {outcome} in {path}{LIVE_NOTE if outcome != 'unchanged' else ''}")


# What `anchors add|remove` tell the operator about workers that are running.
LIVE_NOTE = ("; running workers rebuild their trust store with the new anchors within a second "
             "(their log: 'trust anchors changed')")


@anchors.command("remove")
@click.option("--authority-id", required=True, help="The root authority to stop trusting.")
@click.pass_context
def anchors_remove(ctx: click.Context, authority_id: str) -> None:
    """Remove a trust anchor: from then on nothing chained only to it is admitted."""
    path = settings_of(ctx).trust_anchors_path
    try:
        remove_anchor(path, authority_id)
    except OpsError as exc:
        raise click.ClickException(str(exc)) from exc
    out().print(f"{authority_id}: removed from {path}{LIVE_NOTE}; events chained only to it are "
                "refused from then on (what they were admitted for before stays in the lineage "
                "log)")


@anchors.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the anchors as JSON.")
@click.pass_context
def anchors_list(ctx: click.Context, as_json: bool) -> None:
    """The trust anchors the workers will load."""
    path = settings_of(ctx).trust_anchors_path
    try:
        entries = read_anchor_entries(path)
    except OpsError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    if not entries:
        out().print(f"no trust anchors in {path}")
        return
    table = Table(title=f"trust anchors ({path})")
    table.add_column("authority")
    table.add_column("Ed25519 public key", overflow="fold")
    for entry in entries:
        table.add_row(entry["authority_id"], entry["public_key_hex"])
    print_table(out(), table)
