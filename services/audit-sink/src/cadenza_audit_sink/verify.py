"""Recomputes an org's audit hash chain and reports the first broken link."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from cadenza_audit_sink import repository as repo
from cadenza_audit_sink.domain.audit import BrokenLink, ChainVerifier

PAGE = 5000


@dataclass(frozen=True)
class ChainReport:
    """How many rows were checked and where the chain broke, if it did."""

    org_id: uuid.UUID
    checked: int
    broken: BrokenLink | None

    @property
    def ok(self) -> bool:
        return self.broken is None

    def describe(self) -> str:
        if self.broken is None:
            return f"org {self.org_id}: {self.checked} audit rows, chain intact"
        b = self.broken
        return (
            f"org {self.org_id}: chain BROKEN at org_seq {b.org_seq} (row id {b.row_id}): "
            f"{b.reason}; {self.checked} rows checked"
        )


async def verify_org(conn: asyncpg.Connection, org_id: uuid.UUID) -> ChainReport:
    """Walk the org's rows in `org_seq` order, page by page, until the end or a broken link."""
    verifier = ChainVerifier()
    after = 0
    while True:
        page = await repo.chain_page(conn, org_id, after, PAGE)
        for row_id, row in page:
            if not verifier.feed(row, row_id):
                return ChainReport(org_id, verifier.checked, verifier.broken)
        if len(page) < PAGE:
            return ChainReport(org_id, verifier.checked, None)
        after = page[-1][1].org_seq
