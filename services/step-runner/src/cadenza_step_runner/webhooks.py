"""Outbound webhook subscriptions: deliver execution events, signed, with retries and a log.

A second consumer group on `executions.events`. For each event, every live subscription of
the org that asked for its type (full `cadenza.step.succeeded`, short `step.succeeded`, or
`*`) gets a POST signed per Standard Webhooks (`webhook-id` = the event id, so receivers
can dedupe re-deliveries). Failed attempts retry with exponential backoff; the outcome goes
to `webhook_deliveries`; a run of `disable_after_failures` failed deliveries disables the
subscription in `webhook_subscription_states` (the trigger-api owns the subscription rows).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import sqlalchemy as sa
from aiokafka import ConsumerRecord
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from cadenza_common.crypto import SecretBox
from cadenza_common.db import tables
from cadenza_common.events import Event, ExecutionEvent
from cadenza_common.kafka import PoisonRecord, decode
from cadenza_common.ssrf import SsrfRefused, pinned_client
from cadenza_common.webhook_signing import signature_headers
from cadenza_step_runner import metrics
from cadenza_step_runner.settings import WebhookSettings

log = logging.getLogger(__name__)

DELIVERED = "delivered"
FAILED = "failed"
PENDING = "pending"


@dataclass(frozen=True)
class Subscription:
    """A live subscription with its secret opened."""

    id: uuid.UUID
    org_id: uuid.UUID
    url: str
    event_types: frozenset[str]
    secret: str = field(repr=False)
    allow_private_network: bool = False
    name: str | None = None

    def wants(self, ce_type: str) -> bool:
        """True when the subscription asked for this event type."""
        short = ce_type.removeprefix("cadenza.")
        return bool({"*", ce_type, short} & self.event_types)


@dataclass(frozen=True)
class Attempted:
    """The outcome of one delivery attempt."""

    ok: bool
    status_code: int | None = None
    error: str | None = None
    permanent: bool = False


def envelope(event: Event) -> bytes:
    """The JSON body subscribers receive."""
    return orjson.dumps(
        {
            "id": str(event.event_id),
            "type": event.CE_TYPE,
            "timestamp": event.occurred_at.isoformat(),
            "data": event.model_dump(mode="json"),
        }
    )


class SubscriptionStore:
    """Reads subscriptions (cached briefly) and writes deliveries and subscription states."""

    def __init__(self, engine: AsyncEngine, box: SecretBox, ttl_s: float = 5.0) -> None:
        self._engine = engine
        self._box = box
        self._ttl = ttl_s
        self._cache: dict[uuid.UUID, tuple[float, list[Subscription]]] = {}

    async def live(self, org_id: uuid.UUID) -> list[Subscription]:
        """The org's subscriptions that are neither deleted nor auto-disabled."""
        hit = self._cache.get(org_id)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        subs, states = tables.webhook_subscriptions, tables.webhook_subscription_states
        query = (
            sa.select(subs)
            .outerjoin(states, states.c.subscription_id == subs.c.id)
            .where(
                subs.c.org_id == org_id, subs.c.deleted_at.is_(None), states.c.disabled_at.is_(None)
            )
        )
        async with self._engine.connect() as db:
            rows = (await db.execute(query)).mappings().all()
        found = [self._subscription(r) for r in rows]
        self._cache[org_id] = (time.monotonic() + self._ttl, found)
        return found

    def forget(self, org_id: uuid.UUID) -> None:
        """Drop the cached subscriptions of an org (after one was disabled)."""
        self._cache.pop(org_id, None)

    def _subscription(self, row: Any) -> Subscription:
        return Subscription(
            id=row["id"],
            org_id=row["org_id"],
            url=row["url"],
            event_types=frozenset(row["event_types"] or ()),
            secret=self._box.decrypt(row["secret_ciphertext"], context=f"org:{row['org_id']}"),
            allow_private_network=row["allow_private_network"],
            name=row["name"],
        )

    async def delivered_already(self, sub_id: uuid.UUID, event_id: uuid.UUID) -> bool:
        """True when this event already reached this subscription."""
        d = tables.webhook_deliveries
        query = sa.select(d.c.status).where(d.c.subscription_id == sub_id, d.c.event_id == event_id)
        async with self._engine.connect() as db:
            return (await db.execute(query)).scalar() == DELIVERED

    async def log_attempt(
        self, sub: Subscription, event: Event, outcome: Attempted, status: str
    ) -> None:
        """Record one attempt in `webhook_deliveries` (one row per subscription and event)."""
        d = tables.webhook_deliveries
        now = datetime.now(UTC)
        values = {
            "status": status,
            "status_code": outcome.status_code,
            "error": outcome.error,
            "last_attempt_at": now,
            "delivered_at": now if outcome.ok else None,
        }
        stmt = insert(d).values(
            id=uuid.uuid4(),
            org_id=sub.org_id,
            subscription_id=sub.id,
            event_id=event.event_id,
            event_type=event.CE_TYPE,
            attempts=1,
            **values,
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[d.c.subscription_id, d.c.event_id],
            set_={**values, "attempts": d.c.attempts + 1},
        )
        async with self._engine.begin() as db:
            await db.execute(stmt)

    async def record_outcome(self, sub: Subscription, ok: bool, disable_after: int) -> bool:
        """Count consecutive failed deliveries; return True when this one disabled it."""
        s = tables.webhook_subscription_states
        now = datetime.now(UTC)
        stmt = insert(s).values(
            subscription_id=sub.id,
            org_id=sub.org_id,
            consecutive_failures=0 if ok else 1,
            updated_at=now,
        )
        failures = sa.case((sa.literal(ok), 0), else_=s.c.consecutive_failures + 1)
        upsert = stmt.on_conflict_do_update(
            index_elements=[s.c.subscription_id],
            set_={"consecutive_failures": failures, "updated_at": now},
        ).returning(s.c.consecutive_failures)
        async with self._engine.begin() as db:
            count = (await db.execute(upsert)).scalar_one()
            if ok or count < disable_after:
                return False
            await db.execute(
                sa.update(s)
                .where(s.c.subscription_id == sub.id, s.c.disabled_at.is_(None))
                .values(disabled_at=now, disabled_reason=f"{count} consecutive failed deliveries")
            )
        return True


class WebhookDispatcher:
    """Handles one executions.events record: delivers it to every subscription that wants it."""

    def __init__(self, store: SubscriptionStore, settings: WebhookSettings) -> None:
        self._store = store
        self._settings = settings
        self._clients: dict[bool, httpx.AsyncClient] = {}

    async def __call__(self, record: ConsumerRecord[Any, Any]) -> None:
        """Deliver the record's event (poison records are skipped: this is not their owner)."""
        try:
            event = decode(record.value, record.headers)
        except PoisonRecord:
            return
        if not isinstance(event, ExecutionEvent):
            return
        subs = [s for s in await self._store.live(event.org_id) if s.wants(event.CE_TYPE)]
        if subs:
            body = envelope(event)
            await asyncio.gather(*(self._deliver(s, event, body) for s in subs))

    async def _deliver(self, sub: Subscription, event: Event, body: bytes) -> None:
        # idempotency guard: a re-delivered record does not re-send a delivered event
        if await self._store.delivered_already(sub.id, event.event_id):
            return
        outcome = Attempted(ok=False)
        for attempt in range(1, self._settings.max_attempts + 1):
            outcome = await self._attempt(sub, event, body)
            last = outcome.ok or outcome.permanent or attempt == self._settings.max_attempts
            status = DELIVERED if outcome.ok else (FAILED if last else PENDING)
            await self._store.log_attempt(sub, event, outcome, status)
            if last:
                break
            await asyncio.sleep(self._backoff(attempt))
        metrics.WEBHOOK_DELIVERIES.labels(DELIVERED if outcome.ok else FAILED).inc()
        disabled = await self._store.record_outcome(
            sub, outcome.ok, self._settings.disable_after_failures
        )
        if disabled:
            self._store.forget(sub.org_id)
            log.warning("webhook subscription disabled", extra={"subscription_id": str(sub.id)})

    def _backoff(self, attempt: int) -> float:
        delay = self._settings.initial_backoff_s * 2 ** (attempt - 1)
        return float(min(self._settings.max_backoff_s, delay))

    async def _attempt(self, sub: Subscription, event: Event, body: bytes) -> Attempted:
        headers = signature_headers(sub.secret, str(event.event_id), body)
        headers["Content-Type"] = "application/json"
        client = self._client(sub.allow_private_network or self._settings.allow_private_network)
        try:
            response = await client.post(sub.url, content=body, headers=headers)
        except SsrfRefused as exc:
            return Attempted(
                ok=False, error=f"refused by the SSRF guard: {exc.reason}", permanent=True
            )
        except httpx.HTTPError as exc:
            return Attempted(ok=False, error=f"{type(exc).__name__}")
        ok = 200 <= response.status_code < 300
        return Attempted(
            ok=ok,
            status_code=response.status_code,
            error=None if ok else f"HTTP {response.status_code}",
        )

    def _client(self, allow_private: bool) -> httpx.AsyncClient:
        client = self._clients.get(allow_private)
        if client is None:
            client = pinned_client(allow_private=allow_private, timeout=self._settings.timeout_s)
            self._clients[allow_private] = client
        return client

    async def aclose(self) -> None:
        """Close the HTTP clients."""
        for client in self._clients.values():
            await client.aclose()
