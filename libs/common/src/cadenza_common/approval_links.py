"""Signed, single-use approval links: an HMAC-SHA256 token naming a task, a decision, an expiry.

The approvals service issues them for each task; the trigger-api verifies them on
`POST /api/approvals/decide?token=...` and publishes the decision with the token's
id; the approvals service accepts each token id once (unique in approval_decisions).
Format: `base64url(JSON payload) "." base64url(HMAC-SHA256(key, payload))`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from datetime import datetime
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cadenza_common.crypto import derive_key
from cadenza_common.settings import SecuritySettings


class InvalidToken(ValueError):
    """A token that is malformed or whose signature does not verify."""


class ExpiredToken(InvalidToken):
    """A token whose expiry has passed."""


class DecisionToken(BaseModel):
    """What a signed link says."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    token_id: str
    task_id: uuid.UUID
    org_id: uuid.UUID
    execution_id: uuid.UUID
    node_id: str
    decision: Literal["approve", "reject"]
    expires_at: datetime
    decided_by: str = Field(description="the identity the link was issued to (key id or email)")


def links_key(settings: SecuritySettings) -> bytes:
    """The HMAC key for approval links, derived from `CADENZA_SECRET_KEY`."""
    return derive_key(settings.secret_key.get_secret_value(), "approval-links")


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(key: bytes, token: DecisionToken) -> str:
    """Return the signed token string for a link."""
    payload = orjson.dumps(token.model_dump(mode="json"))
    mac = hmac.new(key, payload, hashlib.sha256).digest()
    return f"{_b64e(payload)}.{_b64e(mac)}"


def verify(key: bytes, signed: str, now: datetime) -> DecisionToken:
    """Check a token's signature and expiry and return what it says.

    Raises:
        InvalidToken: malformed or forged.
        ExpiredToken: past its expiry at `now`.
    """
    payload_b64, _, mac_b64 = signed.partition(".")
    if not payload_b64 or not mac_b64:
        raise InvalidToken("malformed token")
    try:
        payload, mac = _b64d(payload_b64), _b64d(mac_b64)
    except ValueError:
        raise InvalidToken("malformed token") from None
    if not hmac.compare_digest(mac, hmac.new(key, payload, hashlib.sha256).digest()):
        raise InvalidToken("token signature does not verify")
    try:
        token = DecisionToken.model_validate(orjson.loads(payload))
    except (orjson.JSONDecodeError, ValidationError):
        raise InvalidToken("malformed token") from None
    if token.expires_at <= now:
        raise ExpiredToken("token has expired")
    return token
