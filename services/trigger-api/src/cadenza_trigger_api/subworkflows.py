"""Sub-workflow references: resolved to snapshots at execute time (the bundle) and checked
at publish time.

The scheduler keeps nothing in Postgres, so the ExecutionRequested of a root execution
carries the snapshot of every workflow its `sub_workflow` nodes may start, directly or
through their children (`ExecutionRequested.sub_workflows`), keyed by the reference as
written: `slug` (the workflow's latest published version) or `slug@version` (pinned).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from cadenza_common.events import WorkflowSnapshot
from cadenza_trigger_api.errors import Problem

MAX_BUNDLE = 100


class UnresolvableSubWorkflow(Problem):
    status, slug, title = 422, "unresolvable-sub-workflow", "A sub-workflow cannot be resolved"


class VersionLookup(Protocol):
    async def published(
        self, org_id: uuid.UUID, slug: str, version: int | None
    ) -> WorkflowSnapshot | None:
        """The org's workflow `slug` at `version` (None: latest), if it was published."""
        ...


def references(spec: Mapping[str, Any]) -> Iterator[tuple[int, str, str, int | None]]:
    """Each `sub_workflow` node's (node index, key, slug, version) in a (validated) spec."""
    for index, node in enumerate(spec.get("nodes") or ()):
        if isinstance(node, Mapping) and node.get("type") == "sub_workflow":
            ref = node.get("workflow") or {}
            slug, version = str(ref.get("slug")), ref.get("version")
            yield index, (slug if version is None else f"{slug}@{version}"), slug, version


async def bundle(
    lookup: VersionLookup, org_id: uuid.UUID, spec: Mapping[str, Any]
) -> dict[str, WorkflowSnapshot]:
    """Every snapshot the spec's sub-workflows need, recursively.

    Raises:
        UnresolvableSubWorkflow: a reference names no published workflow version.
    """
    found: dict[str, WorkflowSnapshot] = {}
    pending = list(references(spec))
    while pending:
        _, key, slug, version = pending.pop()
        if key in found:
            continue
        snapshot = await lookup.published(org_id, slug, version)
        if snapshot is None:
            raise UnresolvableSubWorkflow(_missing(slug, version))
        if len(found) >= MAX_BUNDLE:
            raise UnresolvableSubWorkflow(f"more than {MAX_BUNDLE} sub-workflows to bundle")
        found[key] = snapshot
        pending += references(snapshot.workflow)
    return found


async def check_resolvable(
    lookup: VersionLookup, org_id: uuid.UUID, spec: Mapping[str, Any]
) -> None:
    """Refuse to publish a spec whose sub-workflows do not resolve (a reference to the
    workflow being published resolves to the version this publish creates).

    Raises:
        UnresolvableSubWorkflow: with every unresolvable reference.
    """
    own = spec.get("slug")
    errors = []
    for index, key, slug, version in references(spec):
        if slug == own and version is None:
            continue
        if await lookup.published(org_id, slug, version) is None:
            errors.append({"path": f"nodes[{index}].workflow", "code": "unresolvable",
                           "message": _missing(slug, version), "ref": key})
    if errors:
        raise UnresolvableSubWorkflow(f"{len(errors)} sub-workflow reference(s) cannot be "
                                      "resolved", errors=errors)


def _missing(slug: str, version: int | None) -> str:
    if version is None:
        return f"sub-workflow {slug!r} does not exist or has no published version"
    return f"sub-workflow {slug!r} has no published version {version}"
