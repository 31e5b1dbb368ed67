"""Kafka plumbing: CloudEvents binary-mode serde, producer/consumer factories, the DLQ, topics.

Binary mode: the event's attributes travel as `ce_*` headers, the value is the
JSON `data` (the pydantic model, serialised with orjson). Execution traffic is
keyed by `execution_id` so one execution stays on one partition, in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, NamedTuple

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError
from pydantic import ValidationError

from cadenza_common.events import (
    Event,
    ExecutionEvent,
    Topics,
    UnknownEventType,
    event_class,
    id_text,
    json_bytes,
)
from cadenza_common.settings import KafkaSettings

log = logging.getLogger(__name__)

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"
MAX_RECORD_BYTES = 1_000_000

Headers = list[tuple[str, bytes]]


class PoisonRecord(ValueError):
    """A record that cannot be decoded into an event (bad JSON, unknown type, bad fields)."""


class UnhandleableRecord(RuntimeError):
    """A decoded record its handler refuses for good; it goes to the DLQ with this reason."""


# --- serde -------------------------------------------------------------------------------------


class KafkaMessage(NamedTuple):
    """One record ready to send: key, value and headers (a tuple: built per event sent,
    where a frozen dataclass's `__init__` cost a third of the headers' time)."""

    key: bytes
    value: bytes
    headers: Headers


_SPEC_VERSION = SPEC_VERSION.encode()
_CONTENT_TYPE = CONTENT_TYPE.encode()


# the last time encoded: the events of one transition share one `now` object
_last_time: tuple[datetime, bytes] | None = None


def _time_bytes(value: datetime) -> bytes:
    """`value.isoformat()` as bytes; the same object again is not formatted again (by
    identity: equal times in other zones format differently)."""
    global _last_time
    last = _last_time
    if last is not None and last[0] is value:
        return last[1]
    text = value.isoformat().encode()
    _last_time = (value, text)
    return text


def encode(event: Event, *, source: str, traceparent: str | None = None) -> KafkaMessage:
    """Encode an event as a CloudEvents 1.0 binary-mode Kafka record.

    Args:
        event: the event to send.
        source: the `ce_source` (the producing service, e.g. `/cadenza/scheduler`).
        traceparent: a W3C trace context to pass through, if any.

    Returns:
        The key, value and headers to produce.
    """
    headers: Headers = [
        ("ce_specversion", _SPEC_VERSION),
        ("ce_id", str(event.event_id).encode()),
        ("ce_type", event.CE_TYPE.encode()),
        ("ce_source", source.encode()),
        ("ce_time", _time_bytes(event.occurred_at)),
        ("content-type", _CONTENT_TYPE),
    ]
    if isinstance(event, ExecutionEvent):
        headers.append(("ce_executionid", id_text(event.execution_id).encode()))
    org_id = getattr(event, "org_id", None)
    if org_id is not None:
        headers.append(("ce_orgid", id_text(org_id).encode()))
    if traceparent:
        headers.append(("traceparent", traceparent.encode()))
    return KafkaMessage(event.partition_key().encode(), json_bytes(event), headers)


def header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> str | None:
    """Return one header's value as text, or None."""
    for key, value in headers or ():
        if key == name:
            return value.decode("utf-8", errors="replace") if value is not None else None
    return None


def decode(value: bytes | None, headers: Sequence[tuple[str, bytes]] | None) -> Event:
    """Decode a binary-mode record into its event model.

    Raises:
        PoisonRecord: with a human-readable reason when the record cannot be decoded.
    """
    ce_type = header(headers, "ce_type")
    if not ce_type:
        raise PoisonRecord("missing ce_type header")
    try:
        cls = event_class(ce_type)
    except UnknownEventType as exc:
        raise PoisonRecord(str(exc)) from None
    if value is None:
        raise PoisonRecord("empty value")
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise PoisonRecord(f"malformed JSON: {exc}") from None
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise PoisonRecord(f"invalid {ce_type}: {exc.errors(include_url=False)}") from None


def traceparent_of(record: ConsumerRecord[Any, Any]) -> str | None:
    """The W3C `traceparent` of a consumed record, to pass on to what it causes."""
    return header(record.headers, "traceparent")


# --- producer ----------------------------------------------------------------------------------


@asynccontextmanager
async def producer(settings: KafkaSettings, **overrides: Any) -> AsyncIterator[AIOKafkaProducer]:
    """An idempotent producer (acks=all) that is started and stopped with the context."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "enable_idempotence": True,
        "acks": "all",
        "linger_ms": 5,
        "max_request_size": MAX_RECORD_BYTES,
    }
    options.update(overrides)
    prod = AIOKafkaProducer(**options)
    await prod.start()
    try:
        yield prod
    finally:
        await prod.stop()


async def send_event(
    prod: AIOKafkaProducer,
    topic: str,
    event: Event,
    *,
    source: str,
    traceparent: str | None = None,
) -> None:
    """Encode an event and send it, waiting for the broker's acknowledgement."""
    msg = encode(event, source=source, traceparent=traceparent)
    await prod.send_and_wait(topic, msg.value, key=msg.key, headers=msg.headers)


# --- consumer ----------------------------------------------------------------------------------


@asynccontextmanager
async def consumer(
    settings: KafkaSettings, topics: Sequence[str], group_id: str, **overrides: Any
) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer with manual commits (`enable_auto_commit=False`), earliest offset reset.

    Metadata is refreshed every 30 s (aiokafka's default is 5 min), so a subscribed
    topic created after the consumer joined is picked up soon. Fetches wait at most
    `settings.fetch_max_wait_ms` (see `KafkaSettings`).
    """
    options: dict[str, Any] = {
        "metadata_max_age_ms": 30_000,
        "fetch_max_wait_ms": settings.fetch_max_wait_ms,
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
    }
    options.update(overrides)
    cons = AIOKafkaConsumer(*topics, **options)
    await cons.start()
    try:
        yield cons
    finally:
        await cons.stop()


def dead_letter_headers(
    headers: Iterable[tuple[str, bytes]] | None,
    reason: str,
    topic: str,
    partition: int,
    offset: int,
    consumer_name: str,
) -> Headers:
    """A record's headers for the DLQ: its own (minus earlier `dlq_*`) plus why and whence."""
    out: Headers = [(k, v) for k, v in (headers or ()) if not k.startswith("dlq_")]
    out += [
        ("dlq_reason", reason[:4000].encode()),
        ("dlq_topic", topic.encode()),
        ("dlq_partition", str(partition).encode()),
        ("dlq_offset", str(offset).encode()),
        ("dlq_consumer", consumer_name.encode()),
    ]
    return out


class DeadLetters:
    """Sends records no consumer can handle to the `dlq` topic with the reason and origin."""

    def __init__(self, prod: AIOKafkaProducer, topics: Topics, consumer_name: str) -> None:
        self._producer = prod
        self._topic = topics.dlq
        self._consumer_name = consumer_name

    async def send(self, record: ConsumerRecord[Any, Any], reason: str) -> None:
        """Publish `record` unchanged to the DLQ, with `dlq_*` headers saying why and whence."""
        headers = dead_letter_headers(
            record.headers,
            reason,
            record.topic,
            record.partition,
            record.offset,
            self._consumer_name,
        )
        log.warning(
            "record sent to dlq",
            extra={"topic": record.topic, "partition": record.partition, "reason": reason},
        )
        await self._producer.send_and_wait(
            self._topic, record.value, key=record.key, headers=headers
        )


Handler = Callable[[Event, ConsumerRecord[Any, Any]], Awaitable[None]]


async def handle_record(
    record: ConsumerRecord[Any, Any], handler: Handler, dead_letters: DeadLetters
) -> None:
    """Decode one record and hand it to `handler`; poison and unhandleable records go to the DLQ."""
    try:
        event = decode(record.value, record.headers)
    except PoisonRecord as exc:
        await dead_letters.send(record, str(exc))
        return
    try:
        await handler(event, record)
    except UnhandleableRecord as exc:
        await dead_letters.send(record, str(exc))


async def consume_forever(
    cons: AIOKafkaConsumer,
    handler: Handler,
    dead_letters: DeadLetters,
    *,
    batch_timeout_ms: int = 200,
    stop: asyncio.Event | None = None,
) -> None:
    """Handle records one at a time, in partition order, committing after each batch.

    At-least-once: an offset is committed only once every record before it was
    handled (or dead-lettered), so a crash re-delivers unfinished records.
    """
    while stop is None or not stop.is_set():
        batches = await cons.getmany(timeout_ms=batch_timeout_ms)
        for tp, records in batches.items():
            for record in records:
                await handle_record(record, handler, dead_letters)
            await cons.commit({tp: records[-1].offset + 1})


# --- topics ------------------------------------------------------------------------------------


async def ensure_topics(
    settings: KafkaSettings,
    names: Sequence[str] | None = None,
    *,
    attempts: int = 30,
    config: dict[str, str] | None = None,
) -> list[str]:
    """Create Cadenza's topics if missing (idempotent); return the names created now.

    Args:
        settings: bootstrap servers, prefix, partition count, replication factor.
        names: physical topic names; default every topic under the settings' prefix.
        attempts: how many times to retry while the broker is still starting.
        config: topic configs to apply to the new topics.
    """
    wanted = list(names) if names is not None else Topics(settings.topic_prefix).all()
    admin = await _admin(settings, attempts)
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in wanted if n not in existing]
        new = [
            NewTopic(
                name=n,
                num_partitions=settings.partitions,
                replication_factor=settings.replication_factor,
                topic_configs=config or {},
            )
            for n in missing
        ]
        if new:
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                log.info("topics created concurrently", extra={"topics": missing})
            await _until_led(admin, missing, settings.partitions)
        return missing
    finally:
        await admin.close()


async def _until_led(
    admin: AIOKafkaAdminClient, names: list[str], partitions: int, timeout_s: float = 30.0
) -> None:
    """Wait until the broker's metadata shows every partition of `names` with a leader.

    CreateTopics returns before the brokers' metadata caches have the new topics. A
    consumer that joins its group in that gap is assigned nothing for them and only
    notices at its next metadata refresh (minutes later), so creation is not done
    until the topics can be read and written.
    """
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        described = await admin.describe_topics(names)
        led = {
            t["topic"]
            for t in described
            if t["error_code"] == 0
            and len(t["partitions"]) >= partitions
            and all(p["error_code"] == 0 and p["leader"] >= 0 for p in t["partitions"])
        }
        if led >= set(names):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"topics without a leader after {timeout_s} s: {set(names) - led}")
        await asyncio.sleep(0.1)


async def delete_prefixed_topics(settings: KafkaSettings) -> None:
    """Delete every topic under the settings' prefix (tests' and benchmarks' own topics).

    Each topic holds `partitions` partitions of open files in the broker: leftovers of many
    runs slow it down and exhaust its file descriptors. Quiet when the broker is gone.
    """
    if not settings.topic_prefix:
        raise ValueError("refusing to delete every topic: the settings have no topic prefix")
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    try:
        await admin.start()
        names = [t for t in await admin.list_topics() if t.startswith(settings.topic_prefix)]
        if names:
            await admin.delete_topics(names)
    except KafkaError:
        log.info("topics not deleted", extra={"prefix": settings.topic_prefix})
    finally:
        await admin.close()


async def _admin(settings: KafkaSettings, attempts: int) -> AIOKafkaAdminClient:
    for attempt in range(1, attempts + 1):
        admin = AIOKafkaAdminClient(
            bootstrap_servers=settings.bootstrap_servers, client_id=settings.client_id
        )
        try:
            await admin.start()
            return admin
        except KafkaConnectionError:
            await admin.close()
            if attempt == attempts:
                raise
            await asyncio.sleep(1.0)
    raise AssertionError("unreachable")


__all__ = [
    "ConsumerRecord",
    "DeadLetters",
    "KafkaMessage",
    "PoisonRecord",
    "TopicPartition",
    "UnhandleableRecord",
    "consume_forever",
    "consumer",
    "dead_letter_headers",
    "decode",
    "delete_prefixed_topics",
    "encode",
    "ensure_topics",
    "handle_record",
    "header",
    "producer",
    "send_event",
]
