"""Crashes and outages: SIGKILL mid-batch, Postgres unreachable for 10 s. Nothing lost or doubled.

The Postgres server is shared with other work, so the outage is simulated for this
sink only: it reaches Postgres through a TCP proxy in the test, which drops every
connection and refuses new ones for 10 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from cadenza_audit_sink.samples import onboarding_history
from cadenza_audit_sink.settings import Settings
from cadenza_audit_sink.testing import (
    all_consumed,
    assert_rows_match_fold,
    count,
    produce,
    running_sink,
    start_sink_process,
    wait_for,
)
from cadenza_audit_sink.verify import verify_org
from cadenza_common import events as ev
from cadenza_common.settings import DatabaseSettings

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def _histories(
    orgs: list[uuid.UUID], per_org: int
) -> tuple[list[ev.ExecutionEvent], list[uuid.UUID]]:
    xids = {org: [uuid.uuid4() for _ in range(per_org)] for org in orgs}
    events = [
        e
        for org in orgs
        for x in xids[org]
        for e in onboarding_history(x, org, T0, external_id=str(x))
    ]
    return events, [x for xs in xids.values() for x in xs]


async def _in_transaction(db: asyncpg.Pool, database: str) -> bool:
    """Whether the sink process holds an open transaction that has written something."""
    return (
        await count(
            db,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 "
            "AND application_name = 'cadenza-audit-sink' AND backend_xid IS NOT NULL",
            database,
        )
        > 0
    )


async def _assert_exactly_once(
    db: asyncpg.Pool, orgs: list[uuid.UUID], events: list[ev.ExecutionEvent], xids: list[uuid.UUID]
) -> None:
    per_org = len(events) // len(orgs)
    for org in orgs:
        assert await count(db, "SELECT count(*) FROM audit_log WHERE org_id = $1", org) == per_org
        async with db.acquire() as conn:
            report = await verify_org(conn, org)
        assert report.ok, report.describe()
    assert await count(
        db, "SELECT count(*) FROM step_events WHERE execution_id = ANY($1)", xids
    ) == len(events)
    await assert_rows_match_fold(db, events, xids)


async def test_sigkill_mid_batch_then_restart_loses_and_doubles_nothing(
    sink_settings: Settings, db: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    orgs = [uuid.uuid4() for _ in range(3)]
    events, xids = _histories(orgs, 100)
    topic = ev.Topics(sink_settings.kafka.topic_prefix).executions_events
    database = database_url.rsplit("/", 1)[1]
    await produce(sink_settings.kafka, topic, events)
    log = tmp_path / "sink.log"

    first = await start_sink_process(sink_settings, log)
    try:
        await wait_for(lambda: _in_transaction(db, database), timeout=60, what="a batch in flight")
        first.send_signal(signal.SIGKILL)
    finally:
        with contextlib.suppress(ProcessLookupError):
            first.kill()
        await first.wait()
    written_before_restart = await count(
        db, "SELECT count(*) FROM step_events WHERE execution_id = ANY($1)", xids
    )
    second = await start_sink_process(sink_settings, log)
    try:
        await wait_for(
            lambda: all_consumed(db, sink_settings, len(events)), timeout=90, what="catch-up"
        )
    finally:
        second.send_signal(signal.SIGTERM)
        await asyncio.wait_for(second.wait(), timeout=30)

    assert written_before_restart < len(events), "the kill came after the last batch"
    await _assert_exactly_once(db, orgs, events, xids)


class PausableProxy:
    """A TCP proxy to Postgres that can drop every connection and refuse new ones."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._up = False
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._up = True

    async def cut(self) -> None:
        """Stop listening and reset every open connection."""
        assert self._server is not None
        self._up = False
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        if not self._up:  # cut while this connection was being set up
            writer.transport.abort()
            up_writer.transport.abort()
            return
        self._writers.add(up_writer)
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()
            self._writers.discard(writer)


async def test_postgres_unreachable_for_ten_seconds_loses_and_doubles_nothing(
    sink_settings: Settings, db: asyncpg.Pool, database_url: str
) -> None:
    host_port = database_url.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    proxy = PausableProxy(host, int(port))
    await proxy.start()
    via_proxy = database_url.replace(host_port, f"127.0.0.1:{proxy.port}")
    settings = sink_settings.model_copy(update={"database": DatabaseSettings(url=via_proxy)})
    orgs = [uuid.uuid4() for _ in range(2)]
    events, xids = _histories(orgs, 40)
    half = len(events) // 2
    topic = ev.Topics(settings.kafka.topic_prefix).executions_events

    async with running_sink(settings):
        await produce(settings.kafka, topic, events[:half])
        await wait_for(lambda: all_consumed(db, settings, 1), what="first batches")
        await proxy.cut()
        await produce(settings.kafka, topic, events[half:])
        await asyncio.sleep(10)
        applied_during_outage = await _consumed(db, settings)
        await proxy.start()
        await wait_for(lambda: all_consumed(db, settings, len(events)), timeout=60, what="catch-up")
    await proxy.cut()

    await _assert_exactly_once(db, orgs, events, xids)
    assert applied_during_outage <= half, "the sink kept writing while Postgres was cut off"


async def _consumed(db: asyncpg.Pool, settings: Settings) -> int:
    return await count(
        db,
        'SELECT coalesce(sum("offset"), 0) FROM sink_offsets WHERE group_id = $1',
        settings.group_id,
    )
