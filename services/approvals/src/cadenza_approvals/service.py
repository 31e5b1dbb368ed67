"""Wiring of the running service: engine, producer, consumer, HTTP port, resend loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaProducer

from cadenza_approvals.handlers import ApprovalHandler, OutcomeSender
from cadenza_approvals.http import create_app, serve
from cadenza_approvals.repository import ApprovalRepository
from cadenza_approvals.settings import Settings
from cadenza_common import kafka
from cadenza_common.db.engine import create_engine
from cadenza_common.events import Topics

log = logging.getLogger(__name__)


class ApprovalsService:
    """One running instance; `run` returns when `stop` is set (or raises on a fatal error)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ready = asyncio.Event()
        self.http_port: int | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Send outcomes left pending by a crash, then consume until `stop` is set."""
        settings = self.settings
        topics = Topics(settings.kafka.topic_prefix)
        engine = create_engine(settings.database)
        repo = ApprovalRepository(engine)
        try:
            async with (
                kafka.producer(settings.kafka) as producer,
                serve(create_app(self.ready.is_set), settings.host, settings.port) as port,
            ):
                self.http_port = port
                sender = OutcomeSender(repo, producer, topics.executions_commands, settings.source)
                handler = ApprovalHandler(repo, sender)
                resent = await sender.send_pending()
                if resent:
                    log.warning("resent outcomes left pending", extra={"count": resent})
                await handler.refresh_open_gauge()
                await self._consume(topics, handler, sender, producer, stop)
        finally:
            await engine.dispose()

    async def _consume(
        self,
        topics: Topics,
        handler: ApprovalHandler,
        sender: OutcomeSender,
        producer: AIOKafkaProducer,
        stop: asyncio.Event,
    ) -> None:
        # two groups, so decisions never queue behind a backlog of execution history
        settings, group = self.settings.kafka, self.settings.group_id
        dead = kafka.DeadLetters(producer, topics, group)
        async with (
            kafka.consumer(settings, [topics.executions_events], f"{group}.events") as events,
            kafka.consumer(settings, [topics.approvals_decisions], f"{group}.decisions") as votes,
        ):
            self.ready.set()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(kafka.consume_forever(events, handler.handle, dead, stop=stop))
                tasks.create_task(kafka.consume_forever(votes, handler.handle, dead, stop=stop))
                tasks.create_task(self._resend_loop(sender, stop))

    async def _resend_loop(self, sender: OutcomeSender, stop: asyncio.Event) -> None:
        # covers a send that failed while the process stayed up
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.resend_interval_s)
            if not stop.is_set():
                await sender.send_pending()
