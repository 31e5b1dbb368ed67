"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Literal

import sqlalchemy as sa
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError

from cadenza_trigger_api.deps import Ctx
from cadenza_trigger_api.errors import Problem
from cadenza_trigger_api.wire import CamelModel

router = APIRouter(tags=["health"])


class NotReady(Problem):
    status, slug, title = 503, "not-ready", "The service cannot serve requests yet"


class Health(CamelModel):
    status: Literal["ok"] = "ok"


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health()


@router.get("/readyz", response_model=Health)
async def readyz(ctx: Ctx) -> Health:
    try:
        async with ctx.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
    except (SQLAlchemyError, OSError) as exc:
        raise NotReady(f"database unavailable: {type(exc).__name__}") from None
    return Health()


@router.get("/metrics", response_class=Response)
async def metrics(ctx: Ctx) -> Response:
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)
