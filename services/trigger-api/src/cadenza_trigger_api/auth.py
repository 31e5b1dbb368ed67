"""API keys (`cdz_<id>_<secret>`), the caller's identity, and role checks per endpoint.

Keys are stored as HMAC-SHA256(pepper, secret). The secret is 256 bits from
`secrets.token_urlsafe`, so a slow password hash (bcrypt/argon2) buys nothing
against brute force — it only protects low-entropy secrets — while it would cost
~100 ms per request. The pepper is derived from `CADENZA_SECRET_KEY`, so a leaked
`api_keys` table alone cannot even be used to check guesses offline.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncEngine

from cadenza_common.crypto import derive_key
from cadenza_common.db.tables import api_keys
from cadenza_common.events import Actor, utcnow
from cadenza_common.settings import SecuritySettings
from cadenza_trigger_api.errors import Forbidden, Unauthorized

KEY_PREFIX = "cdz"


class Role(StrEnum):
    """What a key may do; see `ALLOWED` for the matrix."""

    ADMIN = "admin"
    EDITOR = "editor"
    OPERATOR = "operator"
    APPROVER = "approver"
    VIEWER = "viewer"


class Permission(StrEnum):
    """A class of endpoints that share a role rule."""

    READ = "read"
    EDIT = "edit"
    EXECUTE = "execute"
    APPROVE = "approve"
    ADMIN = "admin"


ALLOWED: dict[Permission, frozenset[Role]] = {
    Permission.READ: frozenset(Role),
    Permission.EDIT: frozenset({Role.ADMIN, Role.EDITOR}),
    Permission.EXECUTE: frozenset({Role.ADMIN, Role.EDITOR, Role.OPERATOR}),
    Permission.APPROVE: frozenset({Role.ADMIN, Role.APPROVER}),
    Permission.ADMIN: frozenset({Role.ADMIN}),
}


@dataclass(frozen=True)
class Principal:
    """The caller: one API key of one org, with one role."""

    key_id: str
    org_id: uuid.UUID
    role: Role

    def actor(self) -> Actor:
        """The caller as events name it."""
        return Actor(kind="api_key", id=self.key_id, roles=[self.role.value])


@dataclass(frozen=True)
class NewKey:
    """A freshly minted key: the plaintext is shown once, only the hash is stored."""

    key_id: str
    plaintext: str
    secret_hash: str


class KeyHasher:
    """Mints keys and hashes their secrets with a pepper."""

    def __init__(self, security: SecuritySettings) -> None:
        self._pepper = derive_key(security.secret_key.get_secret_value(), "api-keys")

    def hash(self, secret: str) -> str:
        """The stored form of a key's secret."""
        return hmac.new(self._pepper, secret.encode(), hashlib.sha256).hexdigest()

    def mint(self) -> NewKey:
        """A new random key."""
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        return NewKey(key_id, f"{KEY_PREFIX}_{key_id}_{secret}", self.hash(secret))


def parse_key(presented: str) -> tuple[str, str]:
    """Split `cdz_<id>_<secret>` into id and secret.

    Raises:
        Unauthorized: when the string is not shaped like a key.
    """
    prefix, _, rest = presented.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != KEY_PREFIX or not key_id or not secret or len(key_id) > 64:
        raise Unauthorized("malformed API key")
    return key_id, secret


@dataclass(frozen=True)
class _CachedKey:
    org_id: uuid.UUID
    role: Role
    secret_hash: str
    revoked: bool
    fetched: float


class Authenticator:
    """Checks presented keys against `api_keys`, caching rows for `ttl_s` seconds.

    The cache makes revocation take effect on other replicas within `ttl_s`; on
    this replica `forget` drops a revoked key at once.
    """

    def __init__(self, engine: AsyncEngine, hasher: KeyHasher, ttl_s: float) -> None:
        self._engine = engine
        self._hasher = hasher
        self._ttl = ttl_s
        self._cache: dict[str, _CachedKey] = {}

    def forget(self, key_id: str) -> None:
        """Drop a key from the cache (after revoking it)."""
        self._cache.pop(key_id, None)

    async def authenticate(self, presented: str) -> Principal:
        """Return the principal of a valid, unrevoked key.

        Raises:
            Unauthorized: unknown, revoked or wrong secret.
        """
        key_id, secret = parse_key(presented)
        row = await self._lookup(key_id)
        if row is None or row.revoked:
            raise Unauthorized("unknown or revoked API key")
        if not hmac.compare_digest(row.secret_hash, self._hasher.hash(secret)):
            raise Unauthorized("unknown or revoked API key")
        return Principal(key_id, row.org_id, row.role)

    async def _lookup(self, key_id: str) -> _CachedKey | None:
        cached = self._cache.get(key_id)
        now = time.monotonic()
        if cached is not None and now - cached.fetched < self._ttl:
            return cached
        async with self._engine.begin() as conn:
            found = (
                await conn.execute(
                    sa.update(api_keys)
                    .where(api_keys.c.id == key_id)
                    .values(last_used_at=utcnow())
                    .returning(
                        api_keys.c.org_id,
                        api_keys.c.role,
                        api_keys.c.secret_hash,
                        api_keys.c.revoked_at,
                    )
                )
            ).first()
        if found is None:
            return None
        entry = _CachedKey(found.org_id, Role(found.role), found.secret_hash,
                           found.revoked_at is not None, now)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key_id] = entry
        return entry


def presented_key(request: Request) -> str:
    """The key from `Authorization: Bearer ...` or `X-API-Key`.

    Raises:
        Unauthorized: when neither header carries one.
    """
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    key = request.headers.get("x-api-key", "").strip()
    if key:
        return key
    raise Unauthorized("an API key is required (Authorization: Bearer cdz_...)")


def require(permission: Permission) -> Callable[[Request], Coroutine[Any, Any, Principal]]:
    """A FastAPI dependency: the authenticated caller, who must hold `permission`."""

    async def dependency(request: Request) -> Principal:
        authenticator: Authenticator = request.app.state.authenticator
        principal = await authenticator.authenticate(presented_key(request))
        if principal.role not in ALLOWED[permission]:
            raise Forbidden(f"role {principal.role.value!r} may not {permission.value}")
        return principal

    return dependency
