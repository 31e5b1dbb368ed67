"""Outbound HTTP through the SSRF guard: size-capped, timed, failures classified."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from cadenza_common.events import ErrorClass, StepError
from cadenza_common.ssrf import pinned_client

KEPT_HEADERS = frozenset(
    {
        "content-type",
        "etag",
        "location",
        "last-modified",
        "retry-after",
        "x-request-id",
        "request-id",
        "idempotency-key",
    }
)


class CallFailed(Exception):
    """A call that did not succeed, with the error the runner reports."""

    def __init__(self, error: StepError) -> None:
        super().__init__(error.message)
        self.error = error

    @property
    def counts_against_breaker(self) -> bool:
        """Connect errors, timeouts, 5xx and 429 say the service is unwell."""
        return self.error.error_class in {
            ErrorClass.CONNECT_ERROR,
            ErrorClass.TIMEOUT,
            ErrorClass.HTTP_5XX,
            ErrorClass.RATE_LIMITED,
        }


@dataclass(frozen=True)
class CallSpec:
    """One outbound request, fully resolved."""

    method: str
    url: str
    timeout_s: float
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    content: bytes | None = None
    allow_private: bool = False
    allowed_hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class CallResult:
    """A successful (2xx) response: parsed body, status, kept headers, raw size."""

    status_code: int
    body: Any
    headers: dict[str, str]
    size: int


def error(cls: ErrorClass, message: str, *, retryable: bool, **kw: Any) -> StepError:
    """Shorthand for a StepError."""
    return StepError(error_class=cls, message=message, retryable=retryable, **kw)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Parse `Retry-After` (delta seconds or an HTTP date) into seconds from now."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def classify_status(response: httpx.Response) -> StepError | None:
    """None for 2xx; otherwise the error a status means (retryable or not)."""
    status = response.status_code
    if 200 <= status < 300:
        return None
    retry_after = retry_after_seconds(response.headers.get("retry-after"))
    if status == 429:
        return error(
            ErrorClass.RATE_LIMITED,
            "HTTP 429 Too Many Requests",
            retryable=True,
            status_code=status,
            retry_after_s=retry_after,
        )
    if status >= 500:
        return error(
            ErrorClass.HTTP_5XX,
            f"HTTP {status}",
            retryable=True,
            status_code=status,
            retry_after_s=retry_after,
        )
    if status == 408:
        return error(
            ErrorClass.TIMEOUT,
            "HTTP 408 Request Timeout",
            retryable=True,
            status_code=status,
            retry_after_s=retry_after,
        )
    if 300 <= status < 400:
        return error(
            ErrorClass.HTTP_4XX,
            f"HTTP {status}: redirects are not followed",
            retryable=False,
            status_code=status,
        )
    return error(ErrorClass.HTTP_4XX, f"HTTP {status}", retryable=False, status_code=status)


class HttpCaller:
    """Sends CallSpecs through SSRF-pinned httpx clients (one per guard policy)."""

    def __init__(self, *, max_response_bytes: int, max_connections: int) -> None:
        self._max_bytes = max_response_bytes
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._clients: dict[tuple[bool, tuple[str, ...]], httpx.AsyncClient] = {}

    def _client(self, allow_private: bool, allowed_hosts: Sequence[str]) -> httpx.AsyncClient:
        key = (allow_private, tuple(allowed_hosts))
        client = self._clients.get(key)
        if client is None:
            client = pinned_client(
                allow_private=allow_private, allowed_hosts=allowed_hosts, limits=self._limits
            )
            self._clients[key] = client
        return client

    async def call(self, spec: CallSpec) -> CallResult:
        """Send one request; return the 2xx result.

        Raises:
            CallFailed: connect error, timeout, non-2xx status, or a response over the cap.
            SsrfRefused: the target is not allowed.
        """
        client = self._client(spec.allow_private, spec.allowed_hosts)
        request = client.build_request(
            spec.method,
            spec.url,
            headers=spec.headers,
            params=spec.params or None,
            content=spec.content,
            timeout=httpx.Timeout(spec.timeout_s),
        )
        try:
            async with asyncio.timeout(spec.timeout_s):
                return await self._send(client, request)
        except (TimeoutError, httpx.TimeoutException):
            raise CallFailed(
                error(ErrorClass.TIMEOUT, f"no response within {spec.timeout_s}s", retryable=True)
            ) from None
        except httpx.TransportError as exc:
            raise CallFailed(
                error(
                    ErrorClass.CONNECT_ERROR,
                    f"connection failed: {type(exc).__name__}",
                    retryable=True,
                )
            ) from None

    async def _send(self, client: httpx.AsyncClient, request: httpx.Request) -> CallResult:
        response = await client.send(request, stream=True)
        try:
            failure = classify_status(response)
            if failure is not None:
                raise CallFailed(failure)
            raw = await self._read_capped(response)
        finally:
            await response.aclose()
        return CallResult(
            status_code=response.status_code,
            body=parse_body(raw, response.headers.get("content-type", "")),
            headers={k: v for k, v in response.headers.items() if k.lower() in KEPT_HEADERS},
            size=len(raw),
        )

    async def _read_capped(self, response: httpx.Response) -> bytes:
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self._max_bytes:
            raise self._too_large(response.status_code)
        chunks: list[bytes] = []
        total = 0
        async for chunk in response.aiter_bytes():
            total += len(chunk)
            if total > self._max_bytes:
                raise self._too_large(response.status_code)
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, status: int) -> CallFailed:
        return CallFailed(
            error(
                ErrorClass.RESPONSE_TOO_LARGE,
                f"response body exceeds the {self._max_bytes}-byte limit",
                retryable=False,
                status_code=status,
            )
        )

    async def aclose(self) -> None:
        """Close every client."""
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


def parse_body(raw: bytes, content_type: str) -> Any:
    """JSON when it says (or looks like) JSON, else text; empty body → None."""
    if not raw:
        return None
    if "json" in content_type or content_type == "":
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return raw.decode("utf-8", errors="replace")
