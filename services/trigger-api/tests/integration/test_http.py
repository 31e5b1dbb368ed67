"""Cross-cutting HTTP behaviour: body limit, health, readiness, metrics, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from cadenza_trigger_api.context import AppContext

from .conftest import Org, Publish

pytestmark = pytest.mark.integration


async def test_oversized_bodies_are_refused_with_413(client: httpx.AsyncClient, org: Org,
                                                     ctx: AppContext) -> None:
    huge = {"slug": "big", "name": "x" * 10, "description": "y" * (ctx.settings.max_body_bytes + 1)}

    response = await client.post("/api/workflows", headers=org.headers(), json=huge)

    assert response.status_code == 413
    assert response.json()["type"].endswith("payload-too-large")


async def test_health_readiness_and_metrics(
    client: httpx.AsyncClient, org: Org, publish: Publish
) -> None:
    await publish(org, "met")
    await client.post("/api/workflows/met/execute", headers=org.headers(),
                      json={"input": {"customer": "c"}})

    health = await client.get("/healthz")
    ready = await client.get("/readyz")
    metrics = await client.get("/metrics")

    assert (health.status_code, ready.status_code) == (200, 200)
    text = metrics.text
    assert 'cadenza_api_requests_total{method="POST",route="/api/workflows/{ref}/execute"' in text
    assert 'cadenza_api_executions_requested_total{workflow="met"} 1.0' in text
    assert "cadenza_outbox_unsent_rows" in text


async def test_unknown_routes_are_problem_documents(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/nothing-here")

    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


def test_create_org_cli_prints_a_working_admin_key(database_url: str) -> None:
    env = {**os.environ, "CADENZA_DATABASE_URL": database_url}

    result = subprocess.run(
        [sys.executable, "-m", "cadenza_trigger_api", "create-org", "cli-org"],
        env=env, capture_output=True, text=True, timeout=60, check=False)

    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    assert key.startswith("cdz_")
    assert "admin" in result.stderr


async def test_values_postgres_cannot_store_are_422_not_500(
    client: httpx.AsyncClient, org: Org
) -> None:
    response = await client.post("/api/workflows", headers=org.headers(),
                                 json={"slug": "nul", "name": "a\u0000b"})

    assert response.status_code == 422
    assert response.json()["type"].endswith("unstorable-value")
