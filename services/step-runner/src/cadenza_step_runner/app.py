"""Wiring: build the clients from Settings and run both consumer groups until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Sequence

from aiokafka import AIOKafkaProducer

from cadenza_common import kafka
from cadenza_common.crypto import SecretBox
from cadenza_common.db.engine import create_engine
from cadenza_common.events import Topics
from cadenza_step_runner.blobs import BlobStore
from cadenza_step_runner.calls import HttpCaller
from cadenza_step_runner.connections import ConnectionRepository
from cadenza_step_runner.consumer import ConcurrentConsumer, RecordHandler
from cadenza_step_runner.handlers import StepHandler
from cadenza_step_runner.refs import RefSource
from cadenza_step_runner.runner import StepRecords
from cadenza_step_runner.settings import Settings
from cadenza_step_runner.webhooks import SubscriptionStore, WebhookDispatcher


async def serve(settings: Settings, stop: asyncio.Event, refs: RefSource | None = None) -> None:
    """Run the steps.ready consumer (and the webhook delivery group) until `stop` is set."""
    topics = Topics(settings.kafka.topic_prefix)
    engine = create_engine(settings.database)
    box = SecretBox.from_settings(settings.security)
    caller = HttpCaller(
        max_response_bytes=settings.max_response_bytes, max_connections=settings.max_in_flight
    )
    subscriptions = SubscriptionStore(engine, box)
    dispatcher = WebhookDispatcher(subscriptions, settings.webhook)
    handler = StepHandler(
        settings,
        ConnectionRepository(engine, box, settings.connection_cache_ttl_s),
        caller,
        BlobStore(engine),
        refs if refs is not None else RefSource.from_environ(),
        subscriptions=subscriptions,
    )
    try:
        # bigger batches: answers are small and many; the default 16 KB makes sends wait
        async with kafka.producer(settings.kafka, max_batch_size=512 * 1024) as producer:
            steps = StepRecords(
                handler, producer, topics, kafka.DeadLetters(producer, topics, "step-runner")
            )
            runs = [
                _consume(
                    settings,
                    producer,
                    [topics.steps_ready],
                    settings.group_id,
                    steps,
                    settings.max_in_flight,
                    stop,
                )
            ]
            if settings.webhook.enabled:
                runs.append(
                    _consume(
                        settings,
                        producer,
                        [topics.executions_events],
                        settings.webhook.group_id,
                        dispatcher,
                        settings.webhook.max_in_flight,
                        stop,
                    )
                )
            await _all_or_none(runs, stop)
    finally:
        await caller.aclose()
        await dispatcher.aclose()
        await engine.dispose()


async def _consume(
    settings: Settings,
    producer: AIOKafkaProducer,
    topic_names: list[str],
    group_id: str,
    handle: RecordHandler,
    max_in_flight: int,
    stop: asyncio.Event,
) -> None:
    async with kafka.consumer(
        settings.kafka,
        [],
        group_id,
        max_poll_records=max_in_flight,
        session_timeout_ms=settings.session_timeout_ms,
    ) as cons:
        runner = ConcurrentConsumer(
            cons,
            handle,
            name=group_id,
            max_in_flight=max_in_flight,
            commit_interval_s=settings.commit_interval_s,
        )
        runner.subscribe(topic_names)
        await runner.run(stop, settings.drain_timeout_s)


async def _all_or_none(runs: Sequence[Awaitable[None]], stop: asyncio.Event) -> None:
    """Run the consumers together; when one fails, stop the others and re-raise."""
    tasks = [asyncio.ensure_future(r) for r in runs]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                stop.set()
        await asyncio.gather(*tasks)
    finally:
        stop.set()
        for task in tasks:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
