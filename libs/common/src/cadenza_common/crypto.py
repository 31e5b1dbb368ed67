"""Secrets at rest: AES-GCM encryption under `CADENZA_SECRET_KEY`, with key ids for rotation.

A ciphertext looks like `v1:<key id>:<base64url(nonce || ciphertext+tag)>`. The key id
says which key sealed it, so the current key can change while older ciphertexts stay
readable (`CADENZA_OLD_SECRET_KEYS="k0:old-secret,..."`). Keys are derived from the
configured strings with HKDF-SHA256, one derived key per purpose.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cadenza_common.settings import SecuritySettings

VERSION = "v1"
NONCE_BYTES = 12


class DecryptionError(ValueError):
    """A ciphertext that is malformed, sealed by an unknown key, or tampered with."""


def derive_key(secret: str, purpose: str) -> bytes:
    """Derive a 32-byte key for one purpose (`secrets`, `approval-links`, ...) from a secret."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"cadenza", info=purpose.encode())
    return hkdf.derive(secret.encode())


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SecretBox:
    """Encrypts and decrypts short secrets (API keys, webhook secrets) with AES-256-GCM."""

    def __init__(self, keys: dict[str, bytes], current_key_id: str) -> None:
        if current_key_id not in keys:
            raise ValueError(f"current key id {current_key_id!r} has no key")
        self._keys = {kid: AESGCM(key) for kid, key in keys.items()}
        self._current = current_key_id

    @classmethod
    def from_settings(cls, settings: SecuritySettings) -> SecretBox:
        """Build from `CADENZA_SECRET_KEY`, `CADENZA_SECRET_KEY_ID`, `CADENZA_OLD_SECRET_KEYS`."""
        keys = {settings.secret_key_id: settings.secret_key.get_secret_value()}
        for pair in filter(None, (p.strip() for p in settings.old_secret_keys.split(","))):
            kid, _, secret = pair.partition(":")
            keys.setdefault(kid, secret)
        return cls({k: derive_key(v, "secrets") for k, v in keys.items()}, settings.secret_key_id)

    def encrypt(self, plaintext: str, *, context: str = "") -> str:
        """Seal `plaintext`; `context` (e.g. `org:<id>`) is bound as associated data."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._keys[self._current].encrypt(nonce, plaintext.encode(), context.encode())
        return f"{VERSION}:{self._current}:{_b64e(nonce + sealed)}"

    def decrypt(self, ciphertext: str, *, context: str = "") -> str:
        """Open a ciphertext made by `encrypt` with the same `context`.

        Raises:
            DecryptionError: malformed, unknown key id, wrong context or tampered.
        """
        version, _, rest = ciphertext.partition(":")
        kid, _, payload = rest.partition(":")
        if version != VERSION or not payload:
            raise DecryptionError("not a Cadenza ciphertext")
        if kid not in self._keys:
            raise DecryptionError(f"unknown key id {kid!r}")
        raw = _b64d(payload)
        try:
            plain = self._keys[kid].decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode())
        except InvalidTag:
            raise DecryptionError(
                "ciphertext does not verify (tampered or wrong context)"
            ) from None
        return plain.decode()

    def needs_rotation(self, ciphertext: str) -> bool:
        """True when the ciphertext was sealed by a key other than the current one."""
        return ciphertext.split(":", 2)[1:2] != [self._current]
