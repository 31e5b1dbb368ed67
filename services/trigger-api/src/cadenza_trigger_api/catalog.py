"""The service catalog: fetch a connection's OpenAPI document (through the SSRF guard) and
flatten it into operations with their request and response JSON Schemas."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import yaml

from cadenza_common.ssrf import SsrfRefused, pinned_client

MAX_DOCUMENT_BYTES = 5_000_000
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
MAX_REF_DEPTH = 8


class CatalogFetchError(Exception):
    """The OpenAPI document could not be fetched or parsed; the message says why."""


@dataclass(frozen=True)
class Operation:
    """One operation of a service."""

    operation_id: str
    method: str
    path: str
    summary: str
    request_schema: dict[str, Any] | None
    response_schema: dict[str, Any] | None


async def fetch_document(
    url: str, *, allow_private: bool, allowed_hosts: list[str], timeout_s: float
) -> dict[str, Any]:
    """GET an OpenAPI document (JSON or YAML) through the SSRF guard, size-bounded.

    Raises:
        CatalogFetchError: refused, unreachable, too large, not 2xx, or not a document.
    """
    try:
        async with pinned_client(allow_private=allow_private, allowed_hosts=allowed_hosts,
                                 timeout=timeout_s) as http, http.stream("GET", url) as response:
            if response.status_code >= 300:
                raise CatalogFetchError(f"GET {url} answered {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise CatalogFetchError("OpenAPI document is too large")
    except SsrfRefused as exc:
        raise CatalogFetchError(f"refused by the SSRF guard: {exc.reason}") from None
    except httpx.HTTPError as exc:
        raise CatalogFetchError(f"{type(exc).__name__}: {exc}"[:500]) from None
    try:
        doc = yaml.safe_load(bytes(body))
    except (yaml.YAMLError, RecursionError):
        raise CatalogFetchError("the OpenAPI document is not JSON or YAML") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("paths"), dict):
        raise CatalogFetchError("not an OpenAPI document (no paths)")
    return doc


def operations(doc: dict[str, Any]) -> list[Operation]:
    """Every operation of an OpenAPI 3 document, with local `$ref`s resolved."""
    found: list[Operation] = []
    for path, item in doc["paths"].items():
        if not isinstance(item, dict):
            continue
        for method in METHODS:
            op = item.get(method)
            if isinstance(op, dict):
                found.append(_operation(doc, str(path), method, op))
    return found


def _operation(doc: dict[str, Any], path: str, method: str, op: dict[str, Any]) -> Operation:
    request = _json_schema(doc, _resolve(doc, op.get("requestBody"), 0))
    responses = op.get("responses")
    if not isinstance(responses, dict):
        responses = {}
    success = next((responses[c] for c in ("200", "201", "202", "default") if c in responses),
                   None)
    return Operation(
        operation_id=str(op.get("operationId") or f"{method.upper()} {path}")[:200],
        method=method.upper(),
        path=path,
        summary=str(op.get("summary") or op.get("description") or "")[:2000],
        request_schema=request,
        response_schema=_json_schema(doc, _resolve(doc, success, 0)),
    )


def _json_schema(doc: dict[str, Any], holder: Any) -> dict[str, Any] | None:
    if not isinstance(holder, dict):
        return None
    content = holder.get("content")
    if not isinstance(content, dict):
        return None
    media = content.get("application/json") or next(iter(content.values()), None)
    if not isinstance(media, dict):
        return None
    schema = _resolve(doc, media.get("schema"), 0)
    return schema if isinstance(schema, dict) else None


def _resolve(doc: dict[str, Any], value: Any, depth: int) -> Any:
    """Inline local `#/...` references, up to a depth (cycles stay as `$ref`)."""
    if depth > MAX_REF_DEPTH:
        return value
    if isinstance(value, dict):
        ref = value.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target = _pointer(doc, ref)
            return value if target is None else _resolve(doc, target, depth + 1)
        return {k: _resolve(doc, v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(doc, v, depth + 1) for v in value]
    return value


def _pointer(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
