"""`create_app(settings)`: the FastAPI app, its lifespan (engine, relay) and OpenAPI document."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from cadenza_common.crypto import SecretBox
from cadenza_common.db.engine import create_engine
from cadenza_common.events import Topics, utcnow
from cadenza_trigger_api import errors, ratelimit
from cadenza_trigger_api.auth import Authenticator, KeyHasher
from cadenza_trigger_api.context import AppContext
from cadenza_trigger_api.intake import Intake, create_pool
from cadenza_trigger_api.limits import BodyLimitMiddleware
from cadenza_trigger_api.metrics import Metrics, MetricsMiddleware
from cadenza_trigger_api.outbox import OutboxRelay
from cadenza_trigger_api.routes import (
    api_keys,
    approvals,
    audit_log,
    catalog,
    connections,
    execute,
    executions,
    health,
    webhooks,
    workflows,
)
from cadenza_trigger_api.settings import Settings

log = logging.getLogger(__name__)

# Routes are matched in order: the hot path first (no other route shares its paths).
ROUTERS = [
    execute.router, workflows.router, executions.router, approvals.router, api_keys.router,
    audit_log.router, connections.router, catalog.router, webhooks.router, health.router,
]


def create_app(settings: Settings) -> FastAPI:
    """Build the app; the engine, caches and (if enabled) the outbox relay live in its lifespan."""
    settings.security.check_production_secrets()
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings.database)
        pool = await create_pool(settings.database.url, settings.database.pool_size)
        hasher = KeyHasher(settings.security)
        app.state.ctx = ctx = AppContext(
            settings=settings, engine=engine, topics=Topics(settings.kafka.topic_prefix),
            box=SecretBox.from_settings(settings.security), hasher=hasher,
            authenticator=Authenticator(engine, hasher, settings.key_cache_ttl_s),
            pool=pool, intake=Intake(pool), metrics=metrics,
        )
        app.state.authenticator = ctx.authenticator
        stop = asyncio.Event()
        tasks = [asyncio.create_task(_maintain(engine, stop), name="maintenance")]
        if settings.relay_enabled:
            relay = OutboxRelay(
                pool, settings.kafka, batch_size=settings.relay_batch_size,
                idle_s=settings.relay_idle_s, retry_s=settings.relay_retry_s, metrics=metrics,
            )
            tasks.append(asyncio.create_task(relay.run(stop), name="outbox-relay"))
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            await pool.close()
            await engine.dispose()

    app = FastAPI(
        title="Cadenza API", version="1.0.0", lifespan=lifespan,
        responses={
            "4XX": {"description": "problem", "content": {errors.PROBLEM_MEDIA_TYPE: {}}},
            "5XX": {"description": "problem", "content": {errors.PROBLEM_MEDIA_TYPE: {}}},
        },
    )
    errors.install(app)
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


async def _maintain(engine: AsyncEngine, stop: asyncio.Event) -> None:
    """Prune old rate-limit windows once a minute."""
    while not stop.is_set():
        try:
            await ratelimit.prune(engine, utcnow())
        except SQLAlchemyError:
            log.warning("could not prune rate-limit windows", exc_info=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 60)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with every error described as problem+json."""
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
        for path in doc.get("paths", {}).values():
            for operation in path.values():
                responses = operation.get("responses", {})
                responses.pop("422", None)
                for code, response in responses.items():
                    if code[0] in "45":
                        response["content"] = {errors.PROBLEM_MEDIA_TYPE: {"schema": PROBLEM}}
        doc.setdefault("components", {}).setdefault("schemas", {}).pop(
            "HTTPValidationError", None)
        doc["components"]["schemas"].pop("ValidationError", None)
        doc["components"]["securitySchemes"] = {
            "apiKey": {"type": "http", "scheme": "bearer", "description": "cdz_<id>_<secret>"}
        }
        doc["security"] = [{"apiKey": []}]
        app.openapi_schema = doc
    return app.openapi_schema


PROBLEM: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
}
