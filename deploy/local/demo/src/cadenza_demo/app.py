"""The demo sibling service: a FastAPI app Cadenza's onboarding workflow calls.

Endpoints: KTP identity capture (and its compensation), AML screening, CRM upsert, a receiver
for outbound webhooks, a flaky endpoint for retry demos, and `/stats` counting every
`Idempotency-Key` seen (the fault suite checks at-least-once calls with it).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from cadenza_demo.answers import Screening, Unreadable, Verdict, ktp_verdict, screening


@dataclass(frozen=True)
class DemoSettings:
    """How the demo behaves: random latency in [min, max] ms, or none at all when instant."""

    latency_min_ms: float = 0.0
    latency_max_ms: float = 0.0
    instant: bool = False
    kyc_token: str | None = None

    def delay_s(self, rng: random.Random) -> float:
        if self.instant or self.latency_max_ms <= 0:
            return 0.0
        return rng.uniform(self.latency_min_ms, self.latency_max_ms) / 1000


@dataclass
class Stats:
    """What the demo saw: requests per Idempotency-Key, webhooks received, CRM records."""

    keys: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    without_key: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    captured: set[str] = field(default_factory=set)
    flaky: Counter[str] = field(default_factory=Counter)

    def see(self, key: str | None) -> None:
        self.requests += 1
        if key:
            self.keys[key] += 1
        else:
            self.without_key += 1

    def reset(self) -> None:
        self.keys.clear()
        self.flaky.clear()
        self.events.clear()
        self.requests = self.without_key = 0


class KtpVerifyRequest(BaseModel):
    nik: str = Field(description="the 16-digit NIK printed on the KTP")
    name: str


class KtpVerifyResponse(BaseModel):
    verdict: Verdict
    nik: str
    name: str
    checks: dict[str, bool]


class ScreenRequest(BaseModel):
    name: str
    nik: str = ""


class ScreenResponse(BaseModel):
    result: Screening
    lists: list[str]
    score: float


class CustomerUpsert(BaseModel):
    model_config = {"extra": "allow"}

    name: str = ""
    status: str = "active"


class CustomerOut(BaseModel):
    customer_id: str
    created: bool
    version: int
    record: dict[str, Any]


class StatsOut(BaseModel):
    requests: int
    without_key: int
    distinct_keys: int
    duplicates: int = Field(description="requests beyond the first per Idempotency-Key")
    keys: dict[str, int] = Field(description="every Idempotency-Key seen and how many times")


IdemKey = Annotated[str | None, Header(alias="Idempotency-Key")]


def create_app(settings: DemoSettings | None = None) -> FastAPI:
    """The demo app; its state lives in the app (one process, in memory)."""
    settings = settings or DemoSettings()
    stats = Stats()
    rng = random.Random()
    app = FastAPI(
        title="Cadenza demo services",
        version="1.0.0",
        description="A KYC provider, an AML screening service and a CRM, answering "
        "deterministically from the input (see cadenza_demo.answers).",
    )
    app.state.stats = stats

    async def arrive(key: str | None) -> None:
        stats.see(key)
        delay = settings.delay_s(rng)
        if delay:
            await asyncio.sleep(delay)

    _identity_routes(app, settings, stats, arrive)
    _screening_routes(app, arrive)
    _crm_routes(app, stats, arrive)
    _support_routes(app, stats, arrive)
    return app


Arrive = Callable[[str | None], Awaitable[None]]


def _identity_routes(app: FastAPI, settings: DemoSettings, stats: Stats, arrive: Arrive) -> None:
    @app.post("/v1/ktp/verify", response_model=KtpVerifyResponse, tags=["identity"])
    async def verify_ktp(
        body: KtpVerifyRequest,
        idempotency_key: IdemKey = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> KtpVerifyResponse:
        """Capture a KTP: NIK ending 0-6 passed, 7 requires_review, 8 rejected, 9 → 422."""
        await arrive(idempotency_key)
        if settings.kyc_token and authorization != f"Bearer {settings.kyc_token}":
            raise HTTPException(401, "a valid bearer token is required")
        try:
            verdict = ktp_verdict(body.nik)
        except Unreadable as exc:
            raise HTTPException(422, str(exc)) from None
        stats.captured.add(body.nik)
        checks = {"format": True, "liveness": verdict != "rejected", "dukcapil_match": True}
        return KtpVerifyResponse(verdict=verdict, nik=body.nik, name=body.name, checks=checks)

    @app.delete("/v1/ktp/verify/{customer_id}", tags=["identity"])
    async def delete_capture(customer_id: str, idempotency_key: IdemKey = None) -> dict[str, Any]:
        """Compensation: forget a customer's captured identity (idempotent)."""
        await arrive(idempotency_key)
        return {"customer_id": customer_id, "deleted": True}


def _screening_routes(app: FastAPI, arrive: Arrive) -> None:
    @app.post("/v2/screen", response_model=ScreenResponse, tags=["aml"])
    async def screen(body: ScreenRequest, idempotency_key: IdemKey = None) -> ScreenResponse:
        """Screen a name: watchlist names are a confirmed_hit, 'possible' a possible_match."""
        await arrive(idempotency_key)
        result, lists = screening(body.name)
        score = {"clear": 0.0, "possible_match": 0.55, "confirmed_hit": 0.97}[result]
        return ScreenResponse(result=result, lists=lists, score=score)


def _crm_routes(app: FastAPI, stats: Stats, arrive: Arrive) -> None:
    @app.put("/v1/customers/{customer_id}", response_model=CustomerOut, tags=["crm"])
    async def upsert_customer(
        customer_id: str, body: CustomerUpsert, idempotency_key: IdemKey = None
    ) -> CustomerOut:
        """Create or update a customer record."""
        await arrive(idempotency_key)
        before = stats.customers.get(customer_id)
        version = (before["version"] + 1) if before else 1
        record = {**body.model_dump(), "version": version}
        stats.customers[customer_id] = record
        return CustomerOut(customer_id=customer_id, created=before is None, version=version,
                           record=record)

    @app.get("/v1/customers/{customer_id}", response_model=CustomerOut, tags=["crm"])
    async def get_customer(customer_id: str) -> CustomerOut:
        record = stats.customers.get(customer_id)
        if record is None:
            raise HTTPException(404, f"no customer {customer_id!r}")
        return CustomerOut(customer_id=customer_id, created=False, version=record["version"],
                           record=record)


def _support_routes(app: FastAPI, stats: Stats, arrive: Arrive) -> None:
    @app.post("/events/{channel}", status_code=202, tags=["webhooks"])
    async def receive_event(channel: str, request: Request,
                            idempotency_key: IdemKey = None) -> dict[str, Any]:
        """Receive an outbound webhook (webhook_emit or a subscription) and keep it."""
        await arrive(idempotency_key)
        body = await request.body()
        stats.events.append({"channel": channel, "body": body.decode(errors="replace"),
                             "webhook_id": request.headers.get("webhook-id")})
        del stats.events[:-1000]
        return {"received": True}

    @app.get("/events", tags=["webhooks"])
    async def list_events(channel: str | None = None) -> list[dict[str, Any]]:
        return [e for e in stats.events if channel in (None, e["channel"])]

    @app.post("/v1/flaky/{name}", tags=["testing"])
    async def flaky(name: str, fail_times: Annotated[int, Query(ge=0, le=100)] = 2,
                    idempotency_key: IdemKey = None) -> Response:
        """Answer 503 the first `fail_times` calls per Idempotency-Key (or name), then 200."""
        await arrive(idempotency_key)
        key = idempotency_key or name
        stats.flaky[key] += 1
        if stats.flaky[key] <= fail_times:
            return JSONResponse({"error": "try again"}, status_code=503)
        return JSONResponse({"name": name, "calls": stats.flaky[key]})

    @app.get("/stats", response_model=StatsOut, tags=["testing"])
    async def get_stats() -> StatsOut:
        """Every Idempotency-Key seen and how many times."""
        duplicates = sum(n - 1 for n in stats.keys.values())
        return StatsOut(requests=stats.requests, without_key=stats.without_key,
                        distinct_keys=len(stats.keys), duplicates=duplicates,
                        keys=dict(stats.keys))

    @app.post("/stats/reset", status_code=204, tags=["testing"])
    async def reset_stats() -> Response:
        stats.reset()
        return Response(status_code=204)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}
