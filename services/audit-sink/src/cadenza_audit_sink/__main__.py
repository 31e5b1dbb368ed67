"""Entry point: `python -m cadenza_audit_sink [run | verify --org ORG | retention [--days N]]`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import uuid
from datetime import UTC, datetime

import asyncpg

from cadenza_audit_sink.metrics import Metrics
from cadenza_audit_sink.retention import purge, retention_loop
from cadenza_audit_sink.settings import Settings
from cadenza_audit_sink.sink import AuditSink
from cadenza_audit_sink.verify import verify_org
from cadenza_common import kafka
from cadenza_common.events import Topics

APPLICATION_NAME = "cadenza-audit-sink"


async def create_pool(settings: Settings) -> asyncpg.Pool:
    """A small pool that does not need the database to be up yet (min_size 0)."""
    pool = await asyncpg.create_pool(
        settings.dsn,
        min_size=0,
        max_size=3,
        command_timeout=30,
        timeout=10,
        server_settings={"application_name": APPLICATION_NAME},
    )
    assert pool is not None
    return pool


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run the consumer (and the retention job) until `stop` is set."""
    metrics = Metrics()
    stop_metrics = metrics.serve(settings.metrics_port)
    pool = await create_pool(settings)
    topics = Topics(settings.kafka.topic_prefix)
    retention = asyncio.create_task(
        retention_loop(pool, settings.retention_days, settings.retention_interval_s, stop)
    )
    try:
        async with (
            kafka.producer(settings.kafka) as prod,
            kafka.consumer(
                settings.kafka,
                [],
                settings.group_id,
                session_timeout_ms=settings.session_timeout_ms,
                max_poll_records=settings.batch_max_records,
            ) as cons,
        ):
            sink = AuditSink(
                settings, pool, cons, kafka.DeadLetters(prod, topics, "audit-sink"), metrics, stop
            )
            sink.subscribe()
            await sink.run()
    finally:
        stop.set()
        await retention
        await pool.close()
        stop_metrics()


async def _serve_until_signalled(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(settings, stop)


async def _verify(settings: Settings, org_id: uuid.UUID) -> int:
    conn = await asyncpg.connect(settings.dsn)
    try:
        report = await verify_org(conn, org_id)
    finally:
        await conn.close()
    print(report.describe())
    return 0 if report.ok else 1


async def _retention(settings: Settings, days: int) -> int:
    pool = await create_pool(settings)
    try:
        deleted = await purge(pool, days, datetime.now(UTC))
    finally:
        await pool.close()
    print(f"deleted {deleted} executions finished more than {days} days ago")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cadenza_audit_sink")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="consume and write (the default)")
    verify = commands.add_parser("verify", help="check an org's audit hash chain")
    verify.add_argument("--org", required=True, type=uuid.UUID)
    retention = commands.add_parser("retention", help="purge old execution rows once")
    retention.add_argument("--days", type=int, default=None)
    args = parser.parse_args(argv)
    settings = Settings()
    if args.command == "verify":
        return asyncio.run(_verify(settings, args.org))
    if args.command == "retention":
        return asyncio.run(_retention(settings, args.days or settings.retention_days))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_until_signalled(settings))
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
