"""``chargemesh keys generate|show``: an Ed25519 key file (JSON, mode 0600) holding a credential
id, a subject id, the public key and the private key; ``show`` prints the public part only."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import click
from chargemesh.infra.cli.errors import ChargemeshGroup
from chargemesh.infra.cli.participant import _id_param, _participant
from chargemesh.streams.sdk.key_files import KeyFileError, public_view, write_key_file
from chargemesh.streams.sdk.participant import Participant


@click.group(cls=ChargemeshGroup)
def keys() -> None:
    """Ed25519 key files of participants (vehicles, stations, issuers, authorities)."""


@keys.command("generate")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Key file to write (mode 0600).")
@click.option("--credential-id", callback=_id_param, default=None,
              help="The credential id this key signs as (default: a new cred:<uuid>).")
@click.option("--subject-id", callback=_id_param, default=None,
              help="The subject it stands for, e.g. a station id (default: the credential id).")
@click.option("--force", is_flag=True, help="Replace an existing file.")
def keys_generate(out: Path, credential_id: str | None, subject_id: str | None,
                  force: bool) -> None:
    """Generate a key; prints its public part as JSON."""
    participant = Participant.generate(credential_id or f"cred:{uuid.uuid4()}", subject_id)
    try:
        write_key_file(out, participant, overwrite=force)
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps({**public_view(participant), "file": str(out)}, indent=2))


@keys.command("show")
@click.argument("key_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def keys_show(key_file: Path) -> None:
    """The public part of a key file (never the private key)."""
    participant = _participant(key_file)
    mode = key_file.stat().st_mode & 0o777
    if mode & 0o077:
        click.echo(f"warning: {key_file} is readable by others (mode {mode:o}); "
                   f"chmod 600 it", err=True)
    click.echo(json.dumps({**public_view(participant), "file": str(key_file)}, indent=2))
