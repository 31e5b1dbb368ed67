"""Standard Webhooks signatures: sign, verify, rotate."""

from __future__ import annotations

import pytest

from cadenza_common.webhook_signing import (
    WebhookVerificationError,
    generate_secret,
    sign,
    signature_headers,
    verify,
)


def test_signature_matches_the_spec_example() -> None:
    # the example from the Standard Webhooks specification
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'

    signature = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)

    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_verify_accepts_what_sign_produced() -> None:
    secret = generate_secret()
    headers = signature_headers(secret, "msg_1", b"{}", timestamp=1_700_000_000)

    verify(secret, headers, b"{}", now=1_700_000_010)


def test_verify_refuses_a_tampered_body() -> None:
    secret = generate_secret()
    headers = signature_headers(secret, "msg_1", b"{}", timestamp=1_700_000_000)

    with pytest.raises(WebhookVerificationError, match="signature"):
        verify(secret, headers, b'{"x":1}', now=1_700_000_000)


def test_verify_refuses_an_old_timestamp() -> None:
    secret = generate_secret()
    headers = signature_headers(secret, "msg_1", b"{}", timestamp=1_700_000_000)

    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify(secret, headers, b"{}", now=1_700_001_000)


def test_rotation_sends_one_signature_per_secret() -> None:
    old, new = generate_secret(), generate_secret()

    headers = signature_headers([old, new], "msg_1", b"{}", timestamp=1_700_000_000)

    verify(old, headers, b"{}", now=1_700_000_000)
    verify(new, headers, b"{}", now=1_700_000_000)
    assert len(headers["webhook-signature"].split(" ")) == 2
