"""StepReady → one HTTP call → StepSucceeded or StepFailed (never raises for call failures)."""

from __future__ import annotations

import logging
import secrets as pysecrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from cadenza_common.crypto import DecryptionError
from cadenza_common.events import ErrorClass, StepError, StepFailed, StepReady, StepSucceeded
from cadenza_common.ssrf import SsrfRefused
from cadenza_common.webhook_signing import signature_headers
from cadenza_step_runner import metrics
from cadenza_step_runner.blobs import BlobStore
from cadenza_step_runner.breaker import CircuitBreaker, CircuitOpen
from cadenza_step_runner.calls import CallFailed, CallResult, CallSpec, HttpCaller, error
from cadenza_step_runner.connections import Connection, ConnectionRepository, UnknownConnection
from cadenza_step_runner.limits import ConnectionLimits
from cadenza_step_runner.refs import RefSource, Resolver, UnresolvedReference
from cadenza_step_runner.settings import Settings
from cadenza_step_runner.webhooks import Subscription, SubscriptionStore

log = logging.getLogger(__name__)

REDACTED = "[redacted]"


class InvalidRequest(ValueError):
    """A StepReady whose request cannot be turned into a call."""


@dataclass
class Plan:
    """A resolved call and the guards it runs under."""

    spec: CallSpec
    target: str
    breaker: CircuitBreaker
    limits: ConnectionLimits


def child_traceparent(parent: str | None) -> str:
    """A W3C traceparent for the outbound call: same trace as the record, a new span."""
    span = pysecrets.token_hex(8)
    parts = (parent or "").split("-")
    if len(parts) == 4 and len(parts[1]) == 32:
        return f"00-{parts[1]}-{span}-{parts[3]}"
    return f"00-{pysecrets.token_hex(16)}-{span}-01"


def scrub(value: Any, secrets: set[str]) -> Any:
    """Replace every occurrence of a used secret in strings of `value`."""
    if not secrets:
        return value
    if isinstance(value, str):
        for s in secrets:
            if s:
                value = value.replace(s, REDACTED)
        return value
    if isinstance(value, dict):
        return {k: scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, secrets) for v in value]
    return value


def _named(subscriptions: list[Subscription], name: str) -> Subscription | None:
    return next((sub for sub in subscriptions if sub.name == name), None)


class StepHandler:
    """Executes `service_call`, `compensation` and `webhook_emit` steps."""

    def __init__(
        self,
        settings: Settings,
        connections: ConnectionRepository,
        caller: HttpCaller,
        blobs: BlobStore,
        refs: RefSource,
        clock: Callable[[], float] = time.monotonic,
        subscriptions: SubscriptionStore | None = None,
    ) -> None:
        self._settings = settings
        self._connections = connections
        self._subscriptions = subscriptions
        self._caller = caller
        self._blobs = blobs
        self._refs = refs
        self._clock = clock
        self._breakers: dict[tuple[uuid.UUID, str], CircuitBreaker] = {}
        self._limits: dict[tuple[uuid.UUID, str], ConnectionLimits] = {}

    async def handle(
        self, event: StepReady, traceparent: str | None = None
    ) -> StepSucceeded | StepFailed:
        """Run one attempt and return its completion event."""
        started = time.perf_counter()
        resolver = Resolver(self._refs)
        target = "-"
        try:
            plan = await self._plan(event, resolver, traceparent)
            target = plan.target
            result = await self._run(plan)
        except Exception as exc:  # every failure becomes a StepFailed
            return self._failed(event, exc, resolver.used_secrets, target, started)
        return await self._succeeded(event, result, resolver.used_secrets, target, started)

    # --- planning ---------------------------------------------------------------------------

    async def _plan(self, event: StepReady, resolver: Resolver, traceparent: str | None) -> Plan:
        request = resolver.resolve(event.request)
        if not isinstance(request, dict):
            raise InvalidRequest("request must be an object")
        headers = {str(k): str(v) for k, v in (request.get("headers") or {}).items()}
        headers["Idempotency-Key"] = event.idempotency_key
        headers["traceparent"] = child_traceparent(traceparent)
        if event.node_type == "webhook_emit":
            return await self._webhook_plan(event, request, headers, resolver)
        return await self._service_plan(event, request, headers, resolver)

    async def _service_plan(
        self,
        event: StepReady,
        request: dict[str, Any],
        headers: dict[str, str],
        resolver: Resolver,
    ) -> Plan:
        method = str(request.get("method", "GET")).upper()
        content, headers = _body(request, headers)
        name = request.get("connection")
        if not name:
            url = request.get("url")
            if not url:
                raise InvalidRequest("request needs a 'connection' or an absolute 'url'")
            return self._url_plan(event, request, method, str(url), headers, content)
        conn = await self._connections.get(event.org_id, str(name))
        if conn.secret:
            resolver.used_secrets.add(conn.secret)
        spec = CallSpec(
            method=method,
            url=_join(conn.base_url, str(request.get("path", ""))),
            headers={**headers, **conn.auth_headers()},
            params=request.get("query") or {},
            content=content,
            timeout_s=self._timeout(event, request, conn),
            allow_private=conn.allow_private_network,
            allowed_hosts=conn.allowed_hosts or (urlsplit(conn.base_url).hostname or "",),
        )
        return Plan(spec, conn.name, *self._guards(event.org_id, conn))

    def _url_plan(
        self,
        event: StepReady,
        request: dict[str, Any],
        method: str,
        url: str,
        headers: dict[str, str],
        content: bytes | None,
        allow_private: bool | None = None,
    ) -> Plan:
        host = urlsplit(url).hostname or url
        spec = CallSpec(
            method=method,
            url=url,
            headers=headers,
            params=request.get("query") or {},
            content=content,
            timeout_s=self._timeout(event, request, None),
            allow_private=(
                self._settings.allow_private_network if allow_private is None else allow_private
            ),
        )
        return Plan(spec, host, *self._guards(event.org_id, None, host))

    async def _webhook_plan(
        self, event: StepReady, request: dict[str, Any], headers: dict[str, str],
        resolver: Resolver,
    ) -> Plan:
        url, secret = request.get("url"), request.get("secret")
        allow_private: bool | None = None
        if not url and request.get("subscription"):
            sub = await self._subscription(event, str(request["subscription"]))
            url, secret, allow_private = sub.url, sub.secret, sub.allow_private_network
            resolver.used_secrets.add(sub.secret)
        if not url:
            raise InvalidRequest("webhook_emit needs a 'url' or a 'subscription'")
        payload = request.get("body", request.get("payload", {}))
        content = orjson.dumps(payload)
        headers["Content-Type"] = "application/json"
        if secret:
            headers.update(signature_headers(str(secret), event.idempotency_key, content))
        return self._url_plan(event, request, "POST", str(url), headers, content, allow_private)

    async def _subscription(self, event: StepReady, name: str) -> Subscription:
        """The org's live webhook subscription called `name` (its URL and signing secret)."""
        found = None
        if self._subscriptions is not None:
            found = _named(await self._subscriptions.live(event.org_id), name)
            if found is None:  # created since the org's subscriptions were cached?
                self._subscriptions.forget(event.org_id)
                found = _named(await self._subscriptions.live(event.org_id), name)
        if found is None:
            raise InvalidRequest(f"no live webhook subscription named {name!r}")
        return found

    def _timeout(self, event: StepReady, request: dict[str, Any], conn: Connection | None) -> float:
        timeout = float(
            request.get("timeout")
            or event.timeout_s
            or (conn.default_timeout_s if conn else self._settings.default_timeout_s)
        )
        if event.deadline is not None:
            left = (event.deadline - datetime.now(UTC)).total_seconds()
            if left <= 0:
                raise CallFailed(
                    error(
                        ErrorClass.TIMEOUT, "step deadline passed before the call", retryable=False
                    )
                )
            timeout = min(timeout, left)
        return timeout

    def _guards(
        self, org_id: uuid.UUID, conn: Connection | None, host: str = ""
    ) -> tuple[CircuitBreaker, ConnectionLimits]:
        key = (org_id, conn.name if conn else f"url:{host}")
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = CircuitBreaker(key[1], self._settings.breaker)
            self._breakers[key] = breaker
        limits = self._limits.get(key)
        if limits is None:
            limits = ConnectionLimits(
                conn.concurrency_limit if conn else None, conn.rate_limit_per_s if conn else None
            )
            self._limits[key] = limits
        return breaker, limits

    # --- running ----------------------------------------------------------------------------

    async def _run(self, plan: Plan) -> CallResult:
        plan.breaker.before_call(self._clock())
        metrics.BREAKER_STATE.labels(plan.target).set(plan.breaker.state)
        async with plan.limits.slot():
            started = time.perf_counter()
            try:
                result = await self._caller.call(plan.spec)
            except CallFailed as exc:
                plan.breaker.record(not exc.counts_against_breaker, self._clock())
                raise
            finally:
                metrics.CALL_DURATION.labels(plan.target).observe(time.perf_counter() - started)
                metrics.BREAKER_STATE.labels(plan.target).set(plan.breaker.state)
        plan.breaker.record(True, self._clock())
        return result

    async def _succeeded(
        self,
        event: StepReady,
        result: CallResult,
        secrets: set[str],
        target: str,
        started: float,
    ) -> StepSucceeded:
        output = scrub(result.body, secrets)
        output_ref = None
        if result.size > self._settings.blob_threshold_bytes:
            output_ref = await self._blobs.put(
                org_id=event.org_id,
                execution_id=event.execution_id,
                node_id=event.node_id,
                attempt=event.attempt,
                data=orjson.dumps(output),
            )
            output = None
        metrics.CALLS.labels(target, "succeeded").inc()
        return StepSucceeded(
            execution_id=event.execution_id,
            org_id=event.org_id,
            node_id=event.node_id,
            attempt=event.attempt,
            output=output,
            output_ref=output_ref,
            status_code=result.status_code,
            response_headers=scrub(result.headers, secrets),
            duration_ms=(time.perf_counter() - started) * 1000,
        )

    def _failed(
        self, event: StepReady, exc: Exception, secrets: set[str], target: str, started: float
    ) -> StepFailed:
        err = failure_of(exc)
        err = err.model_copy(update={"message": scrub(err.message, secrets)})
        metrics.CALLS.labels(target, err.error_class.value).inc()
        log.info(
            "step failed",
            extra={
                "execution_id": str(event.execution_id),
                "node_id": event.node_id,
                "attempt": event.attempt,
                "error_class": err.error_class.value,
                "retryable": err.retryable,
            },
        )
        return StepFailed(
            execution_id=event.execution_id,
            org_id=event.org_id,
            node_id=event.node_id,
            attempt=event.attempt,
            error=err,
            duration_ms=(time.perf_counter() - started) * 1000,
        )


def failure_of(exc: Exception) -> StepError:
    """The StepError an exception during planning or calling means."""
    if isinstance(exc, CallFailed):
        return exc.error
    if isinstance(exc, CircuitOpen):
        return error(
            ErrorClass.CIRCUIT_OPEN,
            str(exc),
            retryable=True,
            retry_after_s=exc.retry_after_s,
            details={"breaker": exc.name},
        )
    if isinstance(exc, SsrfRefused):
        return error(
            ErrorClass.SSRF_REFUSED, f"refused by the SSRF guard: {exc.reason}", retryable=False
        )
    if isinstance(exc, InvalidRequest | UnresolvedReference | UnknownConnection):
        return error(ErrorClass.INVALID_REQUEST, str(exc), retryable=False)
    if isinstance(exc, DecryptionError):
        return error(ErrorClass.INTERNAL, "connection secret cannot be decrypted", retryable=False)
    log.exception("unexpected error in a step call")
    return error(ErrorClass.INTERNAL, f"internal error: {type(exc).__name__}", retryable=True)


def _join(base_url: str, path: str) -> str:
    if "://" in path:
        raise InvalidRequest("'path' must be relative to the connection's base URL")
    if not path:
        return base_url
    return base_url.rstrip("/") + "/" + path.lstrip("/")


def _body(request: dict[str, Any], headers: dict[str, str]) -> tuple[bytes | None, dict[str, str]]:
    if "body" not in request or request["body"] is None:
        return None, headers
    body = request["body"]
    if isinstance(body, str | bytes) and not request.get("json", False):
        return (body.encode() if isinstance(body, str) else body), headers
    if not any(k.lower() == "content-type" for k in headers):
        headers = {**headers, "Content-Type": "application/json"}
    return orjson.dumps(body), headers
