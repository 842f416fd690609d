"""Participant key files: an Ed25519 key (JSON, mode 0600) with its credential id, subject id and
public key, as ``chargemesh keys generate`` writes it and the SDK, the CLI and the embedded
stack's development governance read it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from chargemesh.streams.keys import Signer
from chargemesh.streams.sdk.participant import Participant

KEY_FILE_KIND = "chargemesh.key.v1"
KEY_FILE_BYTES_MAX = 4_096


class KeyFileError(RuntimeError):
    """A key file that cannot be written or used; the message says why."""


def write_key_file(path: Path, participant: Participant, overwrite: bool = False) -> None:
    """Write the key file with mode 0600; an existing file is only replaced with ``overwrite``."""
    private_hex = participant.signer.private_key.private_bytes_raw().hex()
    doc = {"kind": KEY_FILE_KIND, **public_view(participant), "ed25519_private_hex": private_hex}
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} exists; pass --force to replace it") from None
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(doc, handle, indent=2)
        handle.write("\n")


def public_view(participant: Participant) -> dict[str, str]:
    return {"credential_id": participant.credential_id, "subject_id": participant.subject_id,
            "public_key_hex": participant.public_key.hex()}


def load_key_file(path: Path) -> Participant:
    """A participant from a key file (``keys generate``'s, or a ``Signer.save`` file)."""
    try:
        if path.stat().st_size > KEY_FILE_BYTES_MAX:
            raise KeyFileError(f"{path} is larger than a key file ({KEY_FILE_BYTES_MAX} B)")
        doc = json.loads(path.read_text())
        signer = Signer.from_seed(str(doc["credential_id"]),
                                  bytes.fromhex(doc["ed25519_private_hex"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyFileError(f"{path} is not a chargemesh key file: {exc!r}") from exc
    participant = Participant(signer, str(doc.get("subject_id") or signer.credential_id))
    stated = doc.get("public_key_hex")
    if stated is not None and stated.lower() != participant.public_key.hex():
        raise KeyFileError(f"{path}: public_key_hex does not match the private key")
    return participant
