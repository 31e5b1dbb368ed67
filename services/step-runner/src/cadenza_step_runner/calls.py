"""Outbound HTTP through the SSRF guard: size-capped, timed, failures classified.

aiohttp rather than httpx on this hot path: httpcore's pool spends O(connections) per
request, which capped a runner at ~150 calls/s with 256 calls in flight.
"""

from __future__ import annotations

import asyncio
import email.utils
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver, ResolveResult

from cadenza_common.events import ErrorClass, StepError
from cadenza_common.ssrf import check_url, resolve_and_check

USER_AGENT = "cadenza-step-runner/0.1"

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


def classify_status(status: int, retry_after_header: str | None = None) -> StepError | None:
    """None for 2xx; otherwise the error a status means (retryable or not)."""
    if 200 <= status < 300:
        return None
    retry_after = retry_after_seconds(retry_after_header)
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


class CheckedResolver(AbstractResolver):
    """An aiohttp resolver that returns only addresses the SSRF guard accepted.

    aiohttp connects to what the resolver returned (keeping the name for `Host` and TLS),
    so the checked address is the one connected to: no DNS rebinding between check and use.
    """

    def __init__(self, allow_private: bool, allowed_hosts: Sequence[str]) -> None:
        self._allow_private = allow_private
        self._allowed_hosts = tuple(allowed_hosts)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve `host` and check every address (raises SsrfRefused)."""
        name = f"[{host}]" if ":" in host else host
        target = await resolve_and_check(
            f"http://{name}:{port or 80}/",
            allow_private=self._allow_private,
            allowed_hosts=self._allowed_hosts,
        )
        return [
            ResolveResult(
                hostname=host,
                host=str(a),
                port=port,
                family=socket.AF_INET6 if a.version == 6 else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for a in target.addresses
        ]

    async def close(self) -> None:
        """Nothing to release."""


class HttpCaller:
    """Sends CallSpecs through SSRF-checked aiohttp sessions (one per guard policy)."""

    def __init__(self, *, max_response_bytes: int, max_connections: int) -> None:
        self._max_bytes = max_response_bytes
        self._max_connections = max_connections
        self._sessions: dict[tuple[bool, tuple[str, ...]], aiohttp.ClientSession] = {}

    def _session(self, allow_private: bool, allowed_hosts: Sequence[str]) -> aiohttp.ClientSession:
        key = (allow_private, tuple(allowed_hosts))
        session = self._sessions.get(key)
        if session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                limit_per_host=0,
                ttl_dns_cache=30,
                resolver=CheckedResolver(allow_private, allowed_hosts),
            )
            session = aiohttp.ClientSession(
                connector=connector,
                trust_env=False,
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
                headers={"User-Agent": USER_AGENT},
            )
            self._sessions[key] = session
        return session

    async def call(self, spec: CallSpec) -> CallResult:
        """Send one request; return the 2xx result.

        Raises:
            CallFailed: connect error, timeout, non-2xx status, or a response over the cap.
            SsrfRefused: the target is not allowed.
        """
        check_url(spec.url, allow_private=spec.allow_private, allowed_hosts=spec.allowed_hosts)
        session = self._session(spec.allow_private, spec.allowed_hosts)
        try:
            async with asyncio.timeout(spec.timeout_s):
                return await self._send(session, spec)
        except TimeoutError:
            raise CallFailed(
                error(ErrorClass.TIMEOUT, f"no response within {spec.timeout_s}s", retryable=True)
            ) from None
        except aiohttp.ClientError as exc:
            raise CallFailed(
                error(
                    ErrorClass.CONNECT_ERROR,
                    f"connection failed: {type(exc).__name__}",
                    retryable=True,
                )
            ) from None

    async def _send(self, session: aiohttp.ClientSession, spec: CallSpec) -> CallResult:
        params = {k: _param(v) for k, v in spec.params.items()} or None
        async with session.request(
            spec.method,
            spec.url,
            headers=spec.headers,
            params=params,
            data=spec.content,
            allow_redirects=False,
        ) as response:
            failure = classify_status(response.status, response.headers.get("retry-after"))
            if failure is not None:
                raise CallFailed(failure)
            raw = await self._read_capped(response)
            headers = {
                k.lower(): v for k, v in response.headers.items() if k.lower() in KEPT_HEADERS
            }
            return CallResult(
                status_code=response.status,
                body=parse_body(raw, response.headers.get("content-type", "")),
                headers=headers,
                size=len(raw),
            )

    async def _read_capped(self, response: aiohttp.ClientResponse) -> bytes:
        declared = response.content_length
        if declared is not None and declared > self._max_bytes:
            raise self._too_large(response.status)
        chunks: list[bytes] = []
        total = 0
        async for chunk in response.content.iter_chunked(65536):
            total += len(chunk)
            if total > self._max_bytes:
                raise self._too_large(response.status)
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
        """Close every session."""
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


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
