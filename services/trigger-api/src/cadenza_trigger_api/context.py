"""What the routes share for the app's lifetime: engine, topics, secret box, caches, metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg
from fastapi import Request
from jsonschema.protocols import Validator  # type: ignore[import-untyped]
from sqlalchemy.ext.asyncio import AsyncEngine

from cadenza_common.crypto import SecretBox
from cadenza_common.events import Topics
from cadenza_trigger_api.auth import Authenticator, KeyHasher
from cadenza_trigger_api.intake import AdmittedWorkflow, Intake
from cadenza_trigger_api.metrics import Metrics
from cadenza_trigger_api.settings import Settings


@dataclass
class Snapshot:
    """An immutable published version and its compiled input validator."""

    spec: dict[str, Any]
    validator: Validator | None
    has_sub_workflows: bool = False


@dataclass
class AppContext:
    """Everything built once in `create_app`'s lifespan."""

    settings: Settings
    engine: AsyncEngine
    topics: Topics
    box: SecretBox
    hasher: KeyHasher
    authenticator: Authenticator
    pool: asyncpg.Pool
    intake: Intake
    metrics: Metrics
    snapshots: dict[tuple[Any, int], Snapshot] = field(default_factory=dict)
    # (org, ref) -> the workflow an execute found; checked again by every later execute
    workflows: dict[tuple[Any, str], AdmittedWorkflow] = field(default_factory=dict)

    def page_size(self, limit: int | None) -> int:
        """The page size to use for a requested `limit`."""
        if limit is None:
            return self.settings.default_page_size
        return max(1, min(limit, self.settings.max_page_size))

    def org_context(self, org_id: Any) -> str:
        """The associated data that binds a ciphertext to its org."""
        return f"org:{org_id}"


async def get_context(request: Request) -> AppContext:
    """FastAPI dependency: the app's context (async: a plain `def` would run in a worker thread)."""
    ctx: AppContext = request.app.state.ctx
    return ctx
