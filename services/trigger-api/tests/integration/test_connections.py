"""Service connections, the catalog and webhook subscriptions; secrets never come back out."""

from __future__ import annotations

import httpx
import pytest
import sqlalchemy as sa

from cadenza_common.db.tables import service_connections, webhook_subscriptions
from cadenza_trigger_api.auth import Role
from cadenza_trigger_api.context import AppContext

from .conftest import Org

pytestmark = pytest.mark.integration

API_KEY = "sk_live_super_secret_value_123"


async def _connection(client: httpx.AsyncClient, org: Org, base: str, **extra: object
                      ) -> httpx.Response:
    body = {"name": "crm", "baseUrl": base, "authType": "api_key", "authHeader": "X-Api-Key",
            "apiKey": API_KEY, "allowPrivateNetwork": True, **extra}
    return await client.post("/api/service-connections", headers=org.headers(), json=body)


async def test_connection_secret_is_encrypted_and_never_returned(
    client: httpx.AsyncClient, org: Org, ctx: AppContext, upstream: str
) -> None:
    created = await _connection(client, org, upstream)
    cid = created.json()["id"]

    got = await client.get(f"/api/service-connections/{cid}", headers=org.headers(Role.VIEWER))
    listed = await client.get("/api/service-connections", headers=org.headers())
    patched = await client.patch(f"/api/service-connections/{cid}", headers=org.headers(),
                                 json={"apiKey": API_KEY + "-rotated", "defaultTimeoutS": 5})
    async with ctx.engine.connect() as conn:
        stored = (await conn.execute(sa.select(service_connections.c.secret_ciphertext)
                                     .where(service_connections.c.name == "crm",
                                            service_connections.c.org_id == org.id))).scalar_one()

    assert created.status_code == 201
    assert created.json()["hasSecret"] is True
    for response in (created, got, listed, patched):
        assert API_KEY not in response.text
        assert "apiKey" not in response.text
    assert patched.json()["defaultTimeoutS"] == 5
    assert API_KEY not in stored
    assert ctx.box.decrypt(stored, context=f"org:{org.id}") == API_KEY + "-rotated"


async def test_connection_test_reaches_a_real_service(
    client: httpx.AsyncClient, org: Org, upstream: str
) -> None:
    cid = (await _connection(client, org, upstream)).json()["id"]

    response = await client.post(f"/api/service-connections/{cid}/test", headers=org.headers())

    assert response.json()["reachable"] is True
    assert response.json()["statusCode"] == 200


async def test_connection_test_refuses_private_addresses_unless_allowed(
    client: httpx.AsyncClient, org: Org, upstream: str
) -> None:
    cid = (await _connection(client, org, upstream, allowPrivateNetwork=False)).json()["id"]

    response = await client.post(f"/api/service-connections/{cid}/test", headers=org.headers())

    assert response.json()["reachable"] is False
    assert "SSRF" in response.json()["error"]


async def test_connections_are_org_scoped_and_names_unique(
    client: httpx.AsyncClient, org: Org, other_org: Org, upstream: str
) -> None:
    cid = (await _connection(client, org, upstream)).json()["id"]

    dup = await _connection(client, org, upstream)
    foreign = [
        await client.get(f"/api/service-connections/{cid}", headers=other_org.headers()),
        await client.patch(f"/api/service-connections/{cid}", headers=other_org.headers(),
                           json={"defaultTimeoutS": 1}),
        await client.delete(f"/api/service-connections/{cid}", headers=other_org.headers()),
        await client.post(f"/api/service-connections/{cid}/test", headers=other_org.headers()),
    ]
    deleted = await client.delete(f"/api/service-connections/{cid}", headers=org.headers())
    gone = await client.get(f"/api/service-connections/{cid}", headers=org.headers())

    assert dup.status_code == 409
    assert [r.status_code for r in foreign] == [404] * 4
    assert (deleted.status_code, gone.status_code) == (204, 404)


async def test_catalog_lists_operations_from_the_openapi_document(
    client: httpx.AsyncClient, org: Org, upstream: str
) -> None:
    await _connection(client, org, upstream, openapiUrl=f"{upstream}/openapi.json")

    services = await client.get("/api/catalog/services", headers=org.headers(Role.VIEWER))
    refreshed = await client.post("/api/catalog/refresh", headers=org.headers(Role.EDITOR))

    (service,) = services.json()["items"]
    ops = {(o["method"], o["path"]): o for o in service["operations"]}
    create = ops[("POST", "/customers")]
    assert create["operationId"] == "createCustomer"
    assert create["summary"] == "Create a customer"
    assert create["requestSchema"]["properties"]["email"]["type"] == "string"
    assert create["responseSchema"]["required"] == ["name", "email"]
    assert ("GET", "/") in ops
    assert refreshed.json()["items"][0]["error"] is None


async def test_catalog_reports_an_unreachable_document(
    client: httpx.AsyncClient, org: Org, upstream: str
) -> None:
    await _connection(client, org, upstream, openapiUrl=f"{upstream}/missing.json")

    services = await client.get("/api/catalog/services", headers=org.headers())

    (service,) = services.json()["items"]
    assert service["operations"] == []
    assert "404" in service["error"]


async def test_webhook_secret_is_shown_once_and_stored_encrypted(
    client: httpx.AsyncClient, org: Org, other_org: Org, ctx: AppContext
) -> None:
    created = await client.post("/api/webhooks", headers=org.headers(Role.EDITOR), json={
        "url": "https://hooks.example.com/cadenza", "eventTypes": ["execution.succeeded"]})
    secret = created.json()["secret"]

    listed = await client.get("/api/webhooks", headers=org.headers())
    foreign = await client.delete(f"/api/webhooks/{created.json()['id']}",
                                  headers=other_org.headers())
    deleted = await client.delete(f"/api/webhooks/{created.json()['id']}", headers=org.headers())
    after = await client.get("/api/webhooks", headers=org.headers())
    async with ctx.engine.connect() as conn:
        stored = (await conn.execute(sa.select(webhook_subscriptions.c.secret_ciphertext).where(
            webhook_subscriptions.c.org_id == org.id))).scalar_one()

    assert created.status_code == 201
    assert secret.startswith("whsec_")
    assert secret not in listed.text
    assert listed.json()["items"][0]["eventTypes"] == ["execution.succeeded"]
    assert (foreign.status_code, deleted.status_code) == (404, 204)
    assert after.json()["items"] == []
    assert ctx.box.decrypt(stored, context=f"org:{org.id}") == secret


async def test_webhook_urls_must_be_http(client: httpx.AsyncClient, org: Org) -> None:
    response = await client.post("/api/webhooks", headers=org.headers(), json={
        "url": "file:///etc/passwd", "eventTypes": ["execution.succeeded"]})

    assert response.status_code == 422


async def test_a_webhook_name_is_unique_among_the_orgs_live_subscriptions(
    client: httpx.AsyncClient, org: Org, other_org: Org
) -> None:
    body = {"name": "customer-events", "url": "https://hooks.example.com/a",
            "eventTypes": ["execution.succeeded"]}

    first = await client.post("/api/webhooks", headers=org.headers(), json=body)
    clash = await client.post("/api/webhooks", headers=org.headers(), json=body)
    elsewhere = await client.post("/api/webhooks", headers=other_org.headers(), json=body)
    await client.delete(f"/api/webhooks/{first.json()['id']}", headers=org.headers())
    reused = await client.post("/api/webhooks", headers=org.headers(), json=body)

    assert first.status_code == 201
    assert first.json()["name"] == "customer-events"
    assert clash.status_code == 409
    assert elsewhere.status_code == 201
    assert reused.status_code == 201
