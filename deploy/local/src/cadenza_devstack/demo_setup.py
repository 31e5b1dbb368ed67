"""`make run`'s setup through the public API: a demo org and keys (kept in
`.cadenza/demo.json` and reused), the demo service's connections, the onboarding workflow."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from cadenza_common.workflow import load_workflow_text
from cadenza_devstack.state import REPO_ROOT, load_json_fields, port_open
from cadenza_devstack.supervisor import service_port

ONBOARDING = REPO_ROOT / "examples" / "onboarding.yaml"
CONNECTIONS = ("kyc-provider", "aml-screening", "crm")
SUBSCRIPTION_PATH = "/events/subscription"


class SetupFailed(RuntimeError):
    """The API refused a setup call; the text says which and why."""


@dataclass
class DemoState:
    """What `make run` created and reuses on the next run."""

    api_port: int = 0
    demo_port: int = 0
    admin_key: str = ""
    approver_key: str = ""

    @classmethod
    def load(cls, directory: Path) -> DemoState:
        return load_json_fields(cls, directory / "demo.json")

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "demo.json"
        path.write_text(json.dumps(asdict(self), indent=2))
        path.chmod(0o600)

    def choose_ports(self) -> None:
        """Keep last run's ports when they are free, else take new ones."""
        taken: set[int] = set()
        for name in ("api_port", "demo_port"):
            port = getattr(self, name)
            if not port or port in taken or port_open(port):
                port = service_port(taken)
            taken.add(port)
            setattr(self, name, port)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def expect(response: httpx.Response, *codes: int) -> Any:
    """The JSON body of a response with one of `codes`.

    Raises:
        SetupFailed: with the method, path, status and problem detail otherwise.
    """
    if response.status_code not in codes:
        request = response.request
        raise SetupFailed(f"{request.method} {request.url.path} answered "
                          f"{response.status_code}: {response.text[:500]}")
    return response.json() if response.content else None


async def create_org(env: dict[str, str], name: str, per_minute: int | None = None) -> str:
    """Run `python -m cadenza_trigger_api create-org NAME`; return the admin key it prints."""
    args = ["-m", "cadenza_trigger_api", "create-org", name]
    if per_minute is not None:
        args += ["--executions-per-minute", str(per_minute)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise SetupFailed(f"create-org failed: {err.decode(errors='replace')[-500:]}")
    return out.decode().strip().splitlines()[-1]


async def ensure_keys(api: httpx.AsyncClient, state: DemoState, env: dict[str, str]) -> bool:
    """Reuse the stored keys when the API still knows them, else create the org and keys.

    Returns True when a new org was created.
    """
    created_org = False
    if not state.admin_key or (
        await api.get("/api/api-keys", headers=auth(state.admin_key))
    ).status_code != 200:
        state.admin_key = await create_org(env, "Cadenza demo")
        state.approver_key, created_org = "", True
    if not state.approver_key or (
        await api.get("/api/approvals", headers=auth(state.approver_key))
    ).status_code != 200:
        created = expect(await api.post("/api/api-keys", headers=auth(state.admin_key),
                                        json={"name": "demo-approver", "role": "approver"}), 201)
        state.approver_key = created["key"]
    return created_org


async def ensure_connections(api: httpx.AsyncClient, key: str, demo_url: str) -> None:
    """The demo service as `kyc-provider`, `aml-screening` and `crm` (loopback allowed)."""
    existing = expect(await api.get("/api/service-connections", headers=auth(key),
                                    params={"limit": 200}), 200)["items"]
    by_name = {c["name"]: c for c in existing}
    wanted = {"baseUrl": demo_url, "allowPrivateNetwork": True, "defaultTimeoutS": 10.0,
              "openapiUrl": f"{demo_url}/openapi.json"}
    for name in CONNECTIONS:
        current = by_name.get(name)
        if current is None:
            expect(await api.post("/api/service-connections", headers=auth(key),
                                  json={"name": name, **wanted}), 201)
        elif current["baseUrl"].rstrip("/") != demo_url or not current["allowPrivateNetwork"]:
            expect(await api.patch(f"/api/service-connections/{current['id']}",
                                   headers=auth(key), json=wanted), 200)


async def ensure_subscription(api: httpx.AsyncClient, key: str, demo_url: str) -> None:
    """One webhook subscription delivering execution outcomes to the demo service."""
    url = demo_url + SUBSCRIPTION_PATH
    items = expect(await api.get("/api/webhooks", headers=auth(key),
                                 params={"limit": 200}), 200)["items"]
    if any(w["url"] == url for w in items):
        return
    for stale in (w for w in items if w["url"].endswith(SUBSCRIPTION_PATH)):
        expect(await api.delete(f"/api/webhooks/{stale['id']}", headers=auth(key)), 204)
    expect(await api.post("/api/webhooks", headers=auth(key), json={
        "url": url, "eventTypes": ["execution.succeeded", "execution.failed"],
        "allowPrivateNetwork": True}), 201)


async def ensure_workflow(
    api: httpx.AsyncClient, key: str, spec: dict[str, Any]
) -> tuple[str, int]:
    """Create or update the workflow and publish it unless its latest version is `spec`.

    Returns the slug and the published version number.
    """
    slug = str(spec["slug"])
    found = await api.get(f"/api/workflows/{slug}", headers=auth(key))
    if found.status_code == 404:
        workflow = expect(await api.post("/api/workflows", headers=auth(key), json={
            "slug": slug, "name": spec.get("name", slug),
            "description": spec.get("description", ""), "spec": spec}), 201)
    else:
        workflow = expect(found, 200)
        if workflow["spec"] != spec:
            workflow = expect(await api.patch(f"/api/workflows/{slug}", headers=auth(key),
                                              json={"spec": spec}), 200)
    latest = workflow["latestVersion"]
    if latest is not None:
        version = expect(await api.get(f"/api/workflows/{slug}/versions/{latest}",
                                       headers=auth(key)), 200)
        if version["spec"] == spec:
            return slug, int(latest)
    published = expect(await api.post(f"/api/workflows/{slug}/publish", headers=auth(key)), 201)
    return slug, int(published["version"])


def onboarding_spec(path: Path = ONBOARDING) -> dict[str, Any]:
    """The onboarding workflow of `examples/onboarding.yaml` as a JSON document."""
    spec: dict[str, Any] = json.loads(json.dumps(load_workflow_text(path.read_text())))
    return spec
