"""Resolve the runner's own template references, `${env.NAME}` and `${secrets.NAME}`.

The scheduler has already resolved `${trigger.*}`/`${step.*}`; secrets never travel on
Kafka, so the runner fills them in just before the call. A string that is exactly one
reference keeps the value's type; references inside a longer string are interpolated.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cadenza_common.templating import resolve_runner_refs

ENV_PREFIX = "CADENZA_ENV_"
SECRETS_PREFIX = "CADENZA_SECRETS_"


class UnresolvedReference(KeyError):
    """A `${env.X}` or `${secrets.X}` the runner has no value for."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class RefSource:
    """The values `${env.*}` and `${secrets.*}` resolve to."""

    env: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> RefSource:
        """Read `CADENZA_ENV_<NAME>` and `CADENZA_SECRETS_<NAME>` variables."""
        src = os.environ if environ is None else environ
        return cls(
            env={k[len(ENV_PREFIX) :]: v for k, v in src.items() if k.startswith(ENV_PREFIX)},
            secrets={
                k[len(SECRETS_PREFIX) :]: v for k, v in src.items() if k.startswith(SECRETS_PREFIX)
            },
        )


class Resolver:
    """Resolves references in one request and remembers which secret values it used."""

    def __init__(self, source: RefSource) -> None:
        self._source = source
        self.used_secrets: set[str] = set()

    def resolve(self, value: Any) -> Any:
        """Return `value` with every reference replaced and `$${` unescaped (recursively).

        The scheduler renders requests with `escape_for_runner=True`, so data that merely
        contains `${` arrives as `$${` and is never taken for a reference here.
        """
        return resolve_runner_refs(value, self._env, self._secret)

    def _env(self, name: str) -> str:
        return self._lookup("env", name)

    def _secret(self, name: str) -> str:
        value = self._lookup("secrets", name)
        self.used_secrets.add(value)
        return value

    def _lookup(self, kind: str, name: str) -> str:
        values = self._source.env if kind == "env" else self._source.secrets
        if name not in values:
            raise UnresolvedReference(f"${{{kind}.{name}}} is not configured on the runner")
        return values[name]
