"""The reference `standardwebhooks` package verifies what cadenza_common signs."""

from __future__ import annotations

import json

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from cadenza_common.webhook_signing import generate_secret, signature_headers


def test_standardwebhooks_verifies_our_signature() -> None:
    secret = generate_secret()
    body = json.dumps({"type": "cadenza.step.succeeded", "data": {"x": 1}}).encode()
    headers = signature_headers(secret, "msg_abc", body)

    verified = Webhook(secret).verify(body, headers)

    assert verified == {"type": "cadenza.step.succeeded", "data": {"x": 1}}


def test_standardwebhooks_refuses_a_signature_made_with_another_secret() -> None:
    body = b'{"a": 1}'
    headers = signature_headers(generate_secret(), "msg_abc", body)

    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(body, headers)
