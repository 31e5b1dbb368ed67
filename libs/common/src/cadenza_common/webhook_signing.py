"""Standard Webhooks signatures (https://www.standardwebhooks.com) for outbound webhooks.

Headers: `webhook-id` (the message id, stable across retries), `webhook-timestamp`
(unix seconds) and `webhook-signature: v1,<base64 HMAC-SHA256>` over
`<id>.<timestamp>.<body>`. Secrets look like `whsec_<base64 of 24-64 random bytes>`;
several space-separated signatures may be sent while a secret rotates.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping, Sequence

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE_S = 300


class WebhookVerificationError(ValueError):
    """A webhook whose headers are missing, too old/new, or whose signature does not match."""


def generate_secret(num_bytes: int = 32) -> str:
    """Return a new random secret in the `whsec_<base64>` format."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(num_bytes)).decode()


def secret_key(secret: str) -> bytes:
    """The raw HMAC key of a `whsec_<base64>` secret (the prefix is optional).

    Raises:
        ValueError: the secret is not valid base64.
    """
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(raw, validate=True)
    except ValueError:
        raise ValueError("webhook secret must be whsec_<base64>") from None


def sign(secret: str, msg_id: str, timestamp: int, payload: bytes) -> str:
    """Sign one message; return `v1,<base64 signature>`.

    Args:
        secret: the `whsec_...` secret shared with the receiver.
        msg_id: the `webhook-id` (same on every retry of one message).
        timestamp: the `webhook-timestamp` in unix seconds.
        payload: the exact request body bytes.
    """
    signed = f"{msg_id}.{timestamp}.".encode() + payload
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def signature_headers(
    secrets_: str | Sequence[str], msg_id: str, payload: bytes, *, timestamp: int | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers for a body, signed with one or more secrets.

    Args:
        secrets_: one secret, or several (during rotation; each signature is sent).
        msg_id: the message id.
        payload: the exact body bytes.
        timestamp: unix seconds; default now.
    """
    ts = int(time.time()) if timestamp is None else timestamp
    keys = [secrets_] if isinstance(secrets_, str) else list(secrets_)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": " ".join(sign(k, msg_id, ts, payload) for k in keys),
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    payload: bytes,
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> None:
    """Verify a received webhook (header names are matched case-insensitively).

    Raises:
        WebhookVerificationError: missing headers, timestamp outside the tolerance, or no
            signature matches.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, ts_text, sigs = (
        lower.get(h) for h in ("webhook-id", "webhook-timestamp", "webhook-signature")
    )
    if not msg_id or not ts_text or not sigs:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or signature")
    try:
        ts = int(ts_text)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from None
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance_s:
        raise WebhookVerificationError("webhook-timestamp outside the tolerance")
    expected = sign(secret, msg_id, ts, payload)
    for candidate in sigs.split(" "):
        if hmac.compare_digest(candidate, expected):
            return
    raise WebhookVerificationError("no matching signature")


__all__ = [
    "WebhookVerificationError",
    "generate_secret",
    "secret_key",
    "sign",
    "signature_headers",
    "verify",
]
