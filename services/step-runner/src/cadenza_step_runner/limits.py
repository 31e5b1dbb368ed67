"""Per-connection limits: a concurrency cap and a token-bucket rate limit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class TokenBucket:
    """At most `rate` calls per second on average, bursts up to `burst`."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self._rate = rate
        self._capacity = max(1.0, burst if burst is not None else rate)
        self._tokens = self._capacity
        self._updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait until a token is available and take it."""
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(
                    self._capacity, self._tokens + (now - self._updated) * self._rate
                )
                self._updated = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self._rate)


class ConnectionLimits:
    """The concurrency and rate limit of one connection (either may be absent)."""

    def __init__(self, concurrency: int | None, rate_per_s: float | None) -> None:
        self._semaphore = asyncio.Semaphore(concurrency) if concurrency else None
        self._bucket = TokenBucket(rate_per_s) if rate_per_s else None

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one concurrency slot (after taking a rate token) for the call's duration."""
        if self._bucket is not None:
            await self._bucket.acquire()
        if self._semaphore is None:
            yield
            return
        async with self._semaphore:
            yield
