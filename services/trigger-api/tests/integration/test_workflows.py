"""Workflows over HTTP: create, edit, publish, the lifecycle and its forbidden transitions."""

from __future__ import annotations

import uuid

import httpx
import pytest

from cadenza_trigger_api.auth import Role

from .conftest import VALID_SPEC, Org, Publish

pytestmark = pytest.mark.integration

PROBLEM = "https://cadenza.dev/problems/"


async def test_creates_a_draft_and_reads_it_by_slug_and_id(client: httpx.AsyncClient, org: Org
                                                          ) -> None:
    body = {"slug": "onboarding", "name": "Onboarding", "spec": VALID_SPEC}

    created = await client.post("/api/workflows", headers=org.headers(Role.EDITOR), json=body)
    by_slug = await client.get("/api/workflows/onboarding", headers=org.headers(Role.VIEWER))
    by_id = await client.get(f"/api/workflows/{created.json()['id']}", headers=org.headers())

    assert created.status_code == 201
    assert created.json()["status"] == "draft"
    assert created.json()["latestVersion"] is None
    assert by_slug.json() == by_id.json() == created.json()


async def test_duplicate_slug_is_a_conflict(client: httpx.AsyncClient, org: Org) -> None:
    body = {"slug": "dup", "name": "Dup"}
    await client.post("/api/workflows", headers=org.headers(), json=body)

    again = await client.post("/api/workflows", headers=org.headers(), json=body)

    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"
    assert again.json()["type"] == PROBLEM + "conflict"


async def test_unknown_fields_are_rejected(client: httpx.AsyncClient, org: Org) -> None:
    body = {"slug": "x", "name": "X", "colour": "blue"}

    response = await client.post("/api/workflows", headers=org.headers(), json=body)

    assert response.status_code == 422
    assert response.json()["type"] == PROBLEM + "validation-error"
    assert any("colour" in e["path"] for e in response.json()["errors"])


async def test_lifecycle_publish_pause_resume_archive(
    client: httpx.AsyncClient, org: Org, publish: Publish
) -> None:
    wf = await publish(org, "life")
    h = org.headers(Role.EDITOR)

    paused = await client.post("/api/workflows/life/pause", headers=h)
    resumed = await client.post("/api/workflows/life/resume", headers=h)
    republished = await client.post("/api/workflows/life/publish", headers=h)
    archived = await client.post("/api/workflows/life/archive", headers=h)
    versions = await client.get("/api/workflows/life/versions", headers=h)
    v1 = await client.get("/api/workflows/life/versions/1", headers=h)

    assert wf["status"] == "active"
    assert wf["latestVersion"] == 1
    assert paused.json()["status"] == "paused"
    assert resumed.json()["status"] == "active"
    assert republished.json()["version"] == 2
    assert archived.json()["status"] == "archived"
    assert [v["version"] for v in versions.json()["items"]] == [2, 1]
    assert v1.json()["spec"]["slug"] == "life"


async def test_archived_workflow_cannot_be_edited_published_or_resumed(
    client: httpx.AsyncClient, org: Org, publish: Publish
) -> None:
    await publish(org, "gone")
    await client.post("/api/workflows/gone/archive", headers=org.headers())

    edit = await client.patch("/api/workflows/gone", headers=org.headers(), json={"name": "n"})
    pub = await client.post("/api/workflows/gone/publish", headers=org.headers())
    resume = await client.post("/api/workflows/gone/resume", headers=org.headers())

    assert [edit.status_code, pub.status_code, resume.status_code] == [409, 409, 409]
    assert edit.json()["type"] == PROBLEM + "invalid-state"


async def test_pausing_a_draft_is_refused(client: httpx.AsyncClient, org: Org) -> None:
    await client.post("/api/workflows", headers=org.headers(), json={"slug": "d", "name": "D"})

    response = await client.post("/api/workflows/d/pause", headers=org.headers())

    assert response.status_code == 409


async def test_editing_a_draft_changes_its_spec(client: httpx.AsyncClient, org: Org) -> None:
    await client.post("/api/workflows", headers=org.headers(), json={"slug": "e", "name": "E"})

    response = await client.patch("/api/workflows/e", headers=org.headers(),
                                  json={"spec": VALID_SPEC, "description": "new"})

    assert response.status_code == 200
    assert response.json()["spec"] == VALID_SPEC
    assert response.json()["description"] == "new"


async def test_list_is_paginated_with_cursors(client: httpx.AsyncClient, org: Org) -> None:
    for i in range(5):
        await client.post("/api/workflows", headers=org.headers(),
                          json={"slug": f"p{i}", "name": f"P{i}"})

    first = await client.get("/api/workflows?limit=2", headers=org.headers())
    cursor = first.json()["nextCursor"]
    second = await client.get(f"/api/workflows?limit=2&cursor={cursor}", headers=org.headers())
    cursor = second.json()["nextCursor"]
    third = await client.get(f"/api/workflows?limit=2&cursor={cursor}", headers=org.headers())

    slugs = [w["slug"] for page in (first, second, third) for w in page.json()["items"]]
    assert slugs == ["p4", "p3", "p2", "p1", "p0"]
    assert third.json()["nextCursor"] is None


async def test_other_orgs_workflows_answer_404(
    client: httpx.AsyncClient, org: Org, other_org: Org, publish: Publish
) -> None:
    wf = await publish(org, "mine")

    by_slug = await client.get("/api/workflows/mine", headers=other_org.headers())
    by_id = await client.get(f"/api/workflows/{wf['id']}", headers=other_org.headers())
    patch = await client.patch(f"/api/workflows/{wf['id']}", headers=other_org.headers(),
                               json={"name": "stolen"})
    archive = await client.post(f"/api/workflows/{wf['id']}/archive",
                                headers=other_org.headers())
    listed = await client.get("/api/workflows", headers=other_org.headers())

    assert {by_slug.status_code, by_id.status_code, patch.status_code, archive.status_code} == {404}
    assert listed.json()["items"] == []


@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR, Role.APPROVER])
async def test_only_editors_and_admins_change_workflows(
    client: httpx.AsyncClient, org: Org, role: Role
) -> None:
    response = await client.post("/api/workflows", headers=org.headers(role),
                                 json={"slug": "r", "name": "R"})

    assert response.status_code == 403
    assert response.json()["type"] == PROBLEM + "forbidden"


async def test_requests_without_a_valid_key_are_unauthorized(client: httpx.AsyncClient) -> None:
    missing = await client.get("/api/workflows")
    malformed = await client.get("/api/workflows", headers={"Authorization": "Bearer nope"})
    forged = await client.get(
        "/api/workflows", headers={"Authorization": f"Bearer cdz_{uuid.uuid4().hex[:16]}_x"})

    assert {missing.status_code, malformed.status_code, forged.status_code} == {401}
    assert missing.json()["type"] == PROBLEM + "unauthorized"


async def test_publishing_an_invalid_spec_returns_every_error_as_422(
    client: httpx.AsyncClient, org: Org
) -> None:
    spec = {"nodes": [
        {"id": "a", "type": "transform", "expression": "1", "depends_on": ["b"]},
        {"id": "b", "type": "transform", "expression": "1", "depends_on": ["a"]},
        {"id": "c", "type": "teleport"},
    ]}
    await client.post("/api/workflows", headers=org.headers(),
                      json={"slug": "bad", "name": "Bad", "spec": spec})

    response = await client.post("/api/workflows/bad/publish", headers=org.headers())
    after = await client.get("/api/workflows/bad", headers=org.headers())

    assert response.status_code == 422
    assert response.json()["type"] == PROBLEM + "invalid-workflow-spec"
    codes = {(e["path"], e["code"]) for e in response.json()["errors"]}
    assert ("nodes[2]", "unknown_node_type") in codes
    assert any(code == "cycle" for _, code in codes)
    assert after.json()["status"] == "draft"
    assert after.json()["latestVersion"] is None


async def test_publishing_a_valid_spec_freezes_version_one(
    client: httpx.AsyncClient, org: Org
) -> None:
    await client.post("/api/workflows", headers=org.headers(),
                      json={"slug": "good", "name": "Good", "spec": VALID_SPEC})

    response = await client.post("/api/workflows/good/publish", headers=org.headers())
    await client.patch("/api/workflows/good", headers=org.headers(), json={"spec": {"nodes": []}})
    v1 = await client.get("/api/workflows/good/versions/1", headers=org.headers())

    assert response.status_code == 201
    assert response.json()["version"] == 1
    assert v1.json()["spec"]["nodes"] == VALID_SPEC["nodes"]
    assert v1.json()["spec"]["slug"] == "good"
