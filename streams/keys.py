"""Ed25519 keys and signers held by participants (and by the mesh's own processors)."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
# Parsed public keys kept for reuse: parsing costs about as much as a verify.
PUBLIC_KEYS_CACHED_MAX = 65_536


@dataclasses.dataclass(frozen=True)
class Signer:
    """A credential id and the private key that signs for it."""

    credential_id: str
    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls, credential_id: str) -> "Signer":
        return cls(credential_id, Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, credential_id: str, seed: bytes) -> "Signer":
        """Deterministic key from a 32-byte seed (simulations and tests that must replay)."""
        return cls(credential_id, Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def public_key(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)

    def save(self, path: Path) -> None:
        """Write the key as JSON (credential id + raw private key hex), readable by owner only."""
        raw = self.private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"credential_id": self.credential_id, "ed25519_private_hex": raw.hex()},
                      handle)

    @classmethod
    def load(cls, path: Path) -> "Signer":
        data = json.loads(path.read_text())
        return cls.from_seed(data["credential_id"], bytes.fromhex(data["ed25519_private_hex"]))


@functools.lru_cache(maxsize=PUBLIC_KEYS_CACHED_MAX)
def _public_key(public_key: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(public_key)


def verify_signature(public_key: bytes, signature: bytes, message: bytes) -> bool:
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        _public_key(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
