"""API keys: minted once, stored hashed, revoked, admin-only, org-scoped."""

from __future__ import annotations

import httpx
import pytest
import sqlalchemy as sa

from cadenza_common.db.tables import api_keys
from cadenza_trigger_api.auth import Role, parse_key
from cadenza_trigger_api.context import AppContext

from .conftest import Org

pytestmark = pytest.mark.integration


async def test_a_new_key_is_shown_once_works_and_is_stored_hashed(
    client: httpx.AsyncClient, org: Org, ctx: AppContext
) -> None:
    created = await client.post("/api/api-keys", headers=org.headers(),
                                json={"name": "ci", "role": "operator"})
    key = created.json()["key"]

    listed = await client.get("/api/api-keys", headers=org.headers())
    used = await client.get("/api/workflows", headers={"Authorization": f"Bearer {key}"})
    async with ctx.engine.connect() as conn:
        stored = (await conn.execute(sa.select(api_keys.c.secret_hash)
                                     .where(api_keys.c.id == created.json()["id"]))).scalar_one()

    assert created.status_code == 201
    assert key.startswith(f"cdz_{created.json()['id']}_")
    assert used.status_code == 200
    assert key not in listed.text
    assert "key" not in listed.json()["items"][0]
    # the whole secret, as the API splits it (a urlsafe secret may itself hold "_")
    assert parse_key(key)[1] not in stored


async def test_a_revoked_key_stops_working(client: httpx.AsyncClient, org: Org) -> None:
    created = await client.post("/api/api-keys", headers=org.headers(),
                                json={"name": "tmp", "role": "viewer"})
    key_headers = {"Authorization": f"Bearer {created.json()['key']}"}
    before = await client.get("/api/workflows", headers=key_headers)

    revoked = await client.delete(f"/api/api-keys/{created.json()['id']}", headers=org.headers())
    after = await client.get("/api/workflows", headers=key_headers)

    assert (before.status_code, revoked.status_code, after.status_code) == (200, 204, 401)


async def test_only_admins_manage_keys_and_only_their_orgs(
    client: httpx.AsyncClient, org: Org, other_org: Org
) -> None:
    as_editor = await client.post("/api/api-keys", headers=org.headers(Role.EDITOR),
                                  json={"name": "x", "role": "admin"})
    cross_org = await client.delete(f"/api/api-keys/{org.key_id(Role.VIEWER)}",
                                    headers=other_org.headers())
    listed = await client.get("/api/api-keys", headers=other_org.headers())

    assert as_editor.status_code == 403
    assert cross_org.status_code == 404
    assert org.key_id() not in listed.text


async def test_unknown_role_is_rejected(client: httpx.AsyncClient, org: Org) -> None:
    response = await client.post("/api/api-keys", headers=org.headers(),
                                 json={"name": "x", "role": "superuser"})

    assert response.status_code == 422
