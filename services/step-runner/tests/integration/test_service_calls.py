"""service_call and webhook_emit against a real local HTTP server and the real database."""

from __future__ import annotations

import asyncio
import time
import uuid

import orjson
import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks.webhooks import Webhook
from step_runner_stub import StubServer
from step_runner_support import BOX_SETTINGS, add_connection, make_handler, make_settings, ready

from cadenza_common.crypto import SecretBox
from cadenza_common.db import tables
from cadenza_common.events import ErrorClass, StepFailed, StepSucceeded
from cadenza_common.webhook_signing import generate_secret
from cadenza_step_runner.refs import RefSource

pytestmark = pytest.mark.integration


async def test_success_with_templated_body_and_headers(
    engine: AsyncEngine, database_url: str, org_id: uuid.UUID, stub: StubServer
) -> None:
    await add_connection(engine, org_id, "crm", stub.url)
    refs = RefSource(env={"REGION": "eu-1"}, secrets={"TOKEN": "s3cr3t-token"})
    handler = make_handler(engine, make_settings(database_url), refs)
    event = ready(
        org_id,
        {
            "connection": "crm",
            "method": "POST",
            "path": "/echo/templated",
            "headers": {"X-Region": "${env.REGION}", "X-Token": "${secrets.TOKEN}"},
            "body": {"region": "${env.REGION}", "n": 7},
            "query": {"q": "1"},
        },
    )

    result = await handler.handle(event)

    assert isinstance(result, StepSucceeded)
    assert result.status_code == 200
    assert result.output["key"] == "templated"
    assert orjson.loads(result.output["body"]) == {"region": "eu-1", "n": 7}
    assert result.output["query"] == {"q": "1"}
    seen = stub.state.requests_to("/echo/templated")[-1]
    assert seen.headers["x-region"] == "eu-1"
    assert seen.headers["x-token"] == "s3cr3t-token"
    assert seen.headers["idempotency-key"] == f"{event.execution_id}:call"
    assert seen.headers["traceparent"].startswith("00-")
    assert "s3cr3t-token" not in result.model_dump_json()


async def test_500_is_retryable_then_200_succeeds(
    engine: AsyncEngine, database_url: str, org_id: uuid.UUID, stub: StubServer
) -> None:
    stub.state.scripts["flaky"] = [500, 200]
    handler = make_handler(engine, make_settings(database_url))
    event = ready(org_id, {"url": f"{stub.url}/scripted/flaky"})

    first = await handler.handle(event)
    second = await handler.handle(event.model_copy(update={"attempt": 2}))

    assert isinstance(first, StepFailed)
    assert first.error.error_class is ErrorClass.HTTP_5XX
    assert first.error.retryable
    assert first.error.status_code == 500
    assert isinstance(second, StepSucceeded)
    keys = {s.headers["idempotency-key"] for s in stub.state.requests_to("/scripted/flaky")}
    assert keys == {f"{event.execution_id}:call"}


async def test_400_is_not_retryable(
    engine: AsyncEngine, database_url: str, org_id: uuid.UUID, stub: StubServer
) -> None:
    stub.state.scripts["bad"] = [400]
    handler = make_handler(engine, make_settings(database_url))

    result = await handler.handle(ready(org_id, {"url": f"{stub.url}/scripted/bad"}))

    assert isinstance(result, StepFailed)
    assert result.error.error_class is ErrorClass.HTTP_4XX
    assert not result.error.retryable
    calls = REGISTRY.get_sample_value(
        "cadenza_step_runner_calls_total", {"connection": "127.0.0.1", "outcome": "http_4xx"}
    )
    assert calls is not None
    assert calls >= 1


async def test_timeout_is_retryable(
    engine: AsyncEngine, database_url: str, org_id: uuid.UUID, stub: StubServer
) -> None:
    handler = make_handler(engine, make_settings(database_url))

    started = time.monotonic()
    result = await handler.handle(
        ready(org_id, {"url": f"{stub.url}/slow?delay=2", "timeout": 0.3})
    )

    assert isinstance(result, StepFailed)
    assert result.error.error_class is ErrorClass.TIMEOUT
    assert result.error.retryable
    assert time.monotonic() - started < 1.5


async def test_connection_refused_is_retryable(
    engine: AsyncEngine, database_url: str, org_id: uuid.UUID
) -> None:
    handler = make_handler(engine, make_settings(database_url))

    result = await handler.handle(ready(org_id, {"url": "http://127.0.0.1:1/nothing"}))

    assert isinstance(result, StepFailed)
    assert result.error.error_class is ErrorClass.CONNECT_ERROR
    assert result.error.retryable


@pytest.mark.parametrize(
    ("status", "cls"), [(429, ErrorClass.RATE_LIMITED), (503, ErrorClass.HTTP_5XX)]
)
async def test_retry_after_is_passed_back(
    engine: AsyncEngine,
    database_url: str,
    org_id: uuid.UUID,
    stub: StubServer,
    status: int,
    cls: ErrorClass,
) -> None:
    stub.state.scripts[f"busy{status}"] = [status]
    handler = make_handler(engine, make_settings(database_url))

    result = await handler.handle(
        ready(org_id, {"url": f"{stub.url}/scripted/busy{status}?retry_after=7"})
    )

    assert isinstance(result, StepFailed)
    assert result.error.error_class is cls
    assert result.error.retryable
    assert result.error.retry_after_s == 7


async def test_response_over_the_cap_is_not_retryable(
    engine: AsyncEngine, database_url: str, org_id: uuid.UUID, stub: StubServer
) -> None:
    handler = make_handler(engine, make_settings(database_url, max_response_bytes=50_000))

    result = await handler.handle(ready(org_id, {"url": f"{stub.url}/big?size=60000"}))

    assert isinstance(result, StepFailed)
    assert result.error.error_class is ErrorClass.RESPONSE_TOO_LARGE
    assert not result.error.retryable
    assert "50000-byte limit" in result.error.message


async def test_output_over_100kb_goes_to_the_blobs_table(
    engine: AsyncEngine, database_url: str, org_id: uuid.UUID, stub: StubServer
) -> None:
    handler = make_handler(engine, make_settings(database_url))

    result = await handler.handle(ready(org_id, {"url": f"{stub.url}/big?size=150000"}))

    assert isinstance(result, StepSucceeded)
    assert result.output is None
    assert result.output_ref is not None
    async with engine.connect() as db:
        row = (
            (
                await db.execute(
                    sa.select(tables.blobs).where(tables.blobs.c.id == result.output_ref)
                )
            )
            .mappings()
            .one()
        )
    assert orjson.loads(row["data"]) == "x" * 150000
    assert row["execution_id"] == result.execution_id


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/fast",
        "http://10.0.0.1/",
        "http://169.254.169.254/latest",
        "http://localhost:{port}/fast",
    ],
)
async def test_ssrf_guard_refuses_private_targets_when_not_allowed(
    engine: AsyncEngine, database_url: str, org_id: uuid.UUID, stub: StubServer, url: str
) -> None:
    handler = make_handler(engine, make_settings(database_url, allow_private_network=False))
    before = len(stub.state.seen)

    result = await handler.handle(ready(org_id, {"url": url.format(port=stub.port)}))

    assert isinstance(result, StepFailed)
    assert result.error.error_class is ErrorClass.SSRF_REFUSED
    assert not result.error.retryable
    assert len(stub.state.seen) == before


async def test_connection_without_private_network_permission_is_refused(
    engine: AsyncEngine, database_url: str, org_id: uuid.UUID, stub: StubServer
) -> None:
    await add_connection(
        engine, org_id, "local", f"http://localhost:{stub.port}", allow_private=False
    )
    handler = make_handler(engine, make_settings(database_url))

    result = await handler.handle(ready(org_id, {"connection": "local", "path": "/fast"}))

    assert isinstance(result, StepFailed)
    assert result.error.error_class is ErrorClass.SSRF_REFUSED
    assert "loopback" in result.error.message


async def test_breaker_opens_after_failures_and_half_opens_after_cooldown(
    engine: AsyncEngine, database_url: str, org_id: uuid.UUID, stub: StubServer
) -> None:
    await add_connection(engine, org_id, "shaky", stub.url)
    now = [1000.0]
    handler = make_handler(engine, make_settings(database_url), clock=lambda: now[0])
    stub.state.scripts["shaky"] = [500]
    call = {"connection": "shaky", "path": "/scripted/shaky"}
    for _ in range(3):
        await handler.handle(ready(org_id, call))
    calls_before = len(stub.state.requests_to("/scripted/shaky"))

    fast_fail = await handler.handle(ready(org_id, call))
    stub.state.scripts["shaky"] = [200]
    now[0] += 1.0  # past the 0.5 s cool-down: one probe goes through
    probe = await handler.handle(ready(org_id, call))
    after = await handler.handle(ready(org_id, call))

    assert isinstance(fast_fail, StepFailed)
    assert fast_fail.error.error_class is ErrorClass.CIRCUIT_OPEN
    assert fast_fail.error.retryable
    assert "shaky" in fast_fail.error.message
    assert calls_before == 3
    assert isinstance(probe, StepSucceeded)
    assert isinstance(after, StepSucceeded)


async def test_encrypted_key_is_sent_decrypted_and_never_in_the_event_or_logs(
    engine: AsyncEngine,
    database_url: str,
    org_id: uuid.UUID,
    stub: StubServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = "sk_live_" + uuid.uuid4().hex
    await add_connection(engine, org_id, "billing", stub.url, secret=key)
    handler = make_handler(engine, make_settings(database_url))
    caplog.set_level("DEBUG")
    stub.state.scripts["billing-fail"] = [500]

    ok = await handler.handle(ready(org_id, {"connection": "billing", "path": "/echo/billing"}))
    failed = await handler.handle(
        ready(org_id, {"connection": "billing", "path": "/scripted/billing-fail"})
    )

    assert stub.state.requests_to("/echo/billing")[-1].headers["authorization"] == f"Bearer {key}"
    assert isinstance(ok, StepSucceeded)
    assert isinstance(failed, StepFailed)
    for event in (ok, failed):
        assert key not in event.model_dump_json()
    assert key not in caplog.text


async def test_unknown_secret_reference_fails_without_a_call(
    engine: AsyncEngine, database_url: str, org_id: uuid.UUID, stub: StubServer
) -> None:
    handler = make_handler(engine, make_settings(database_url))

    result = await handler.handle(
        ready(
            org_id,
            {
                "url": f"{stub.url}/echo/nosecret",
                "headers": {"X-Key": "${secrets.MISSING}"},
            },
        )
    )

    assert isinstance(result, StepFailed)
    assert result.error.error_class is ErrorClass.INVALID_REQUEST
    assert not result.error.retryable
    assert stub.state.requests_to("/echo/nosecret") == []


async def test_webhook_emit_is_signed_so_standardwebhooks_verifies_it(
    engine: AsyncEngine, database_url: str, org_id: uuid.UUID, stub: StubServer
) -> None:
    secret = generate_secret()
    handler = make_handler(engine, make_settings(database_url), RefSource(secrets={"HOOK": secret}))
    event = ready(
        org_id,
        {
            "url": f"{stub.url}/echo/hook",
            "secret": "${secrets.HOOK}",
            "body": {"order": 42, "status": "shipped"},
        },
        node_type="webhook_emit",
    )

    result = await handler.handle(event)

    assert isinstance(result, StepSucceeded)
    seen = stub.state.requests_to("/echo/hook")[-1]
    payload = Webhook(secret).verify(seen.body, seen.headers)
    assert payload == {"order": 42, "status": "shipped"}
    assert seen.headers["webhook-id"] == event.idempotency_key
    assert secret not in result.model_dump_json()


async def test_connection_concurrency_limit_bounds_calls_in_flight(
    engine: AsyncEngine, database_url: str, org_id: uuid.UUID, stub: StubServer
) -> None:
    await add_connection(engine, org_id, "narrow", stub.url, concurrency_limit=2)
    handler = make_handler(engine, make_settings(database_url))
    call = {"connection": "narrow", "path": "/slow", "query": {"delay": 0.2}}

    started = time.monotonic()
    results = await asyncio.gather(*(handler.handle(ready(org_id, call)) for _ in range(6)))
    elapsed = time.monotonic() - started

    assert all(isinstance(r, StepSucceeded) for r in results)
    assert elapsed >= 0.55  # 6 calls of 0.2 s, two at a time


async def test_connection_rate_limit_spaces_calls(
    engine: AsyncEngine, database_url: str, org_id: uuid.UUID, stub: StubServer
) -> None:
    await add_connection(engine, org_id, "slowrate", stub.url, rate_limit_per_s=5)
    handler = make_handler(engine, make_settings(database_url))
    call = {"connection": "slowrate", "path": "/fast"}

    started = time.monotonic()
    results = await asyncio.gather(*(handler.handle(ready(org_id, call)) for _ in range(8)))
    elapsed = time.monotonic() - started

    assert all(isinstance(r, StepSucceeded) for r in results)
    assert elapsed >= 0.5  # a burst of 5, then 3 more at 5/s


async def add_subscription(
    engine: AsyncEngine, org_id: uuid.UUID, name: str, url: str, secret: str, **columns: object
) -> uuid.UUID:
    """Insert a webhook subscription as the trigger-api would (secret sealed for the org)."""
    box = SecretBox.from_settings(BOX_SETTINGS)
    ident = uuid.uuid4()
    async with engine.begin() as db:
        await db.execute(tables.webhook_subscriptions.insert().values(
            id=ident, org_id=org_id, name=name, url=url, event_types=["customer.*"],
            secret_ciphertext=box.encrypt(secret, context=f"org:{org_id}"),
            allow_private_network=True, **columns))
    return ident


async def test_webhook_emit_to_a_named_subscription_posts_to_its_url_signed_with_its_secret(
    engine: AsyncEngine, database_url: str, org_id: uuid.UUID, stub: StubServer
) -> None:
    secret = generate_secret()
    handler = make_handler(engine, make_settings(database_url))
    await handler.handle(ready(org_id, {"subscription": "warm-up", "event": "x"},
                               node_type="webhook_emit"))  # caches the org's (empty) list
    await add_subscription(engine, org_id, "customer-events", f"{stub.url}/echo/sub", secret)
    event = ready(
        org_id,
        {"subscription": "customer-events", "event": "customer.onboarded",
         "payload": {"customer_id": "c-1"}},
        node_type="webhook_emit",
    )

    result = await handler.handle(event)

    assert isinstance(result, StepSucceeded), result
    seen = stub.state.requests_to("/echo/sub")[-1]
    assert Webhook(secret).verify(seen.body, seen.headers) == {"customer_id": "c-1"}
    assert seen.headers["webhook-id"] == event.idempotency_key
    assert secret not in result.model_dump_json()


async def test_webhook_emit_to_an_unknown_or_deleted_subscription_fails_without_retry(
    engine: AsyncEngine, database_url: str, org_id: uuid.UUID, stub: StubServer
) -> None:
    handler = make_handler(engine, make_settings(database_url))
    await add_subscription(engine, org_id, "gone", f"{stub.url}/echo/gone", generate_secret(),
                           deleted_at=sa.func.now())

    results = [
        await handler.handle(ready(org_id, {"subscription": name, "event": "e"},
                                   node_type="webhook_emit"))
        for name in ("nobody", "gone")
    ]

    for result in results:
        assert isinstance(result, StepFailed)
        assert result.error.error_class is ErrorClass.INVALID_REQUEST
        assert result.error.retryable is False
    assert stub.state.requests_to("/echo/gone") == []
