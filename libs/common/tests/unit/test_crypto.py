"""Secrets at rest and signed approval links."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from cadenza_common import approval_links
from cadenza_common.crypto import DecryptionError, SecretBox
from cadenza_common.settings import SecuritySettings

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _box(key: str = "k" * 32, kid: str = "k1", old: str = "") -> SecretBox:
    return SecretBox.from_settings(
        SecuritySettings(secret_key=SecretStr(key), secret_key_id=kid, old_secret_keys=old)
    )


def test_encrypt_then_decrypt_returns_the_secret_and_hides_it() -> None:
    box = _box()

    sealed = box.encrypt("sk_live_123", context="org:1")

    assert "sk_live_123" not in sealed
    assert sealed.startswith("v1:k1:")
    assert box.decrypt(sealed, context="org:1") == "sk_live_123"


def test_same_secret_encrypts_differently_each_time() -> None:
    box = _box()

    assert box.encrypt("x") != box.encrypt("x")


def test_wrong_context_or_tampering_is_refused() -> None:
    box = _box()
    sealed = box.encrypt("secret", context="org:1")
    tampered = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]

    with pytest.raises(DecryptionError):
        box.decrypt(sealed, context="org:2")
    with pytest.raises(DecryptionError):
        box.decrypt(tampered, context="org:1")
    with pytest.raises(DecryptionError, match="not a Cadenza ciphertext"):
        box.decrypt("plain text")


def test_rotated_key_still_opens_old_ciphertexts() -> None:
    old_box = _box(key="old-secret-" * 3, kid="k0")
    sealed = old_box.encrypt("secret")

    new_box = _box(key="new-secret-" * 3, kid="k1", old="k0:" + "old-secret-" * 3)

    assert new_box.decrypt(sealed) == "secret"
    assert new_box.needs_rotation(sealed)
    assert not new_box.needs_rotation(new_box.encrypt("secret"))


def test_unknown_key_id_is_refused() -> None:
    sealed = _box(kid="k9").encrypt("secret")

    with pytest.raises(DecryptionError, match="unknown key id"):
        _box(kid="k1").decrypt(sealed)


def _token(expires: datetime) -> approval_links.DecisionToken:
    return approval_links.DecisionToken(
        token_id="t1",
        task_id=uuid.uuid4(),
        org_id=uuid.uuid4(),
        execution_id=uuid.uuid4(),
        node_id="approve",
        decision="approve",
        expires_at=expires,
        decided_by="key1",
    )


def test_signed_link_verifies_and_says_what_was_signed() -> None:
    key = approval_links.links_key(SecuritySettings())
    token = _token(NOW + timedelta(hours=1))

    assert approval_links.verify(key, approval_links.sign(key, token), NOW) == token


def test_forged_link_is_refused() -> None:
    key = approval_links.links_key(SecuritySettings())
    signed = approval_links.sign(key, _token(NOW + timedelta(hours=1)))
    other = approval_links.sign(b"another key" * 3, _token(NOW + timedelta(hours=1)))

    with pytest.raises(approval_links.InvalidToken, match="does not verify"):
        approval_links.verify(key, other, NOW)
    with pytest.raises(approval_links.InvalidToken):
        approval_links.verify(key, signed.replace(".", "x.", 1), NOW)
    with pytest.raises(approval_links.InvalidToken, match="malformed"):
        approval_links.verify(key, "garbage", NOW)


def test_expired_link_is_refused() -> None:
    key = approval_links.links_key(SecuritySettings())
    signed = approval_links.sign(key, _token(NOW - timedelta(seconds=1)))

    with pytest.raises(approval_links.ExpiredToken):
        approval_links.verify(key, signed, NOW)
