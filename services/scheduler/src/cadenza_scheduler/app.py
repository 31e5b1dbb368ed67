"""The Faust app: its input topics, the `executions` table, the agent and the timer task.

Wiring only: every decision is in `domain.decide()`, every record-level step in
`agents.Shell`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Sequence,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
import orjson
from aiohttp import web as aioweb
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import AppT
from mode.utils.futures import maybe_async
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cadenza_common.events import Topics
from cadenza_scheduler import heap
from cadenza_scheduler.agents import Outgoing, Record, Shell, partition_of
from cadenza_scheduler.metrics import Metrics
from cadenza_scheduler.settings import Settings

log = logging.getLogger(__name__)


class DurableTable(faust.Table[str, bytes]):  # type: ignore[misc]
    """A Faust table whose changelog writes go out when the shell needs them durable.

    Faust sends each changed value through its producer buffer, which a single task drains
    one record per event-loop turn: under load a write took 40-60 ms to reach the broker,
    and Faust's commit-time flush gives up on the buffer after 0.1 s, so "the offset is
    committed" never implied "the value is on the broker". Here a change only marks its key
    dirty; `persist(keys)` sends the current values of those keys (and of keys dirty for
    longer than `write_delay_s`) straight to the producer, and returns once the broker has
    them. Writes nobody waits for (the outbox clears after a batch's sends) are held back
    up to `write_delay_s`, so that the execution's next transition usually replaces them:
    one changelog record per transition instead of two.
    """

    write_delay_s: float = 1.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # key -> when it became dirty; insertion order is age order (a key keeps its place)
        self.dirty: dict[str, float] = {}
        self.last_write: dict[str, Any] = {}
        # one persist hands its records to the producer at a time: a concurrent one (the
        # timer's) must not take a dirty key and leave it unsent while another waits for it
        self._sending = asyncio.Lock()

    def partition_for_key(self, key: Any) -> int:
        # The partition of the execution's input records (same key, same partitioner), not
        # Faust's "current event": the agent takes records in batches across partitions.
        return partition_of(str(key), self.partitions or 1)

    def on_key_set(self, key: Any, value: Any) -> None:
        self.dirty.setdefault(key, time.monotonic())
        self._sensor_on_set(self, key, value)

    def on_key_del(self, key: Any) -> None:
        self.dirty.setdefault(key, time.monotonic())
        self._sensor_on_del(self, key)

    def _due(self, keys: Iterable[str] | None) -> list[str]:
        """The dirty keys to send now: `keys` (all when None) and the ones held back too long."""
        if keys is None:
            return list(self.dirty)
        due = dict.fromkeys(k for k in keys if k in self.dirty)
        oldest = time.monotonic() - self.write_delay_s
        for key, since in self.dirty.items():
            if since > oldest:
                break
            due[key] = None  # once, also when it is one of `keys`
        return list(due)

    async def persist(self, keys: Iterable[str] | None = None) -> None:
        """Send the current values of dirty `keys` (all dirty keys when None) and of keys held
        back longer than `write_delay_s` (a tombstone when deleted); return once the latest
        writes of `keys` and of everything sent now are on the broker.

        Raises what the producer raised; the keys waited for are then dirty again.
        """
        wanted = None if keys is None else set(keys)
        topic = self.changelog_topic.get_topic_name()
        async with self._sending:
            sending = self._due(wanted)
            records = [
                Outgoing(topic, self.partition_for_key(k), _changelog_key(k), self.data.get(k), [])
                for k in sending
            ]
            # a key stays dirty until the producer took its record
            acks = await send_records(self.app, records)
            for key, ack in zip(sending, acks, strict=True):
                self.last_write[key] = ack
                self.dirty.pop(key, None)
        waited = set(sending) if wanted is None else wanted.union(sending)
        waiting = [(k, self.last_write[k]) for k in waited if k in self.last_write]
        try:
            await asyncio.gather(*(fut for _, fut in waiting))
        except BaseException:
            now = time.monotonic()
            for key, _ in waiting:
                self.dirty.setdefault(key, now)
            raise
        for key, fut in waiting:
            if self.last_write.get(key) is fut:
                del self.last_write[key]

    def forget(self) -> None:
        """Drop the write bookkeeping (the partitions are gone)."""
        self.dirty.clear()
        self.last_write.clear()


async def send_records(app: AppT, records: Sequence[Outgoing]) -> list[Awaitable[Any]]:
    """Hand `records` to the producer, in order, one batch per partition; return an awaitable
    a record (its batch's) that resolves once the broker acknowledged it.

    Faust's `Producer.send` takes one record at a time, and aiokafka then gives each its own
    future and accumulator bookkeeping: ~24 us of the main thread a record, where building
    the partition's batch here (aiokafka's `send_batch`) costs ~16 (bench/README.md). A
    record without a partition goes through Faust's `send` (the producer's partitioner).
    """
    faust_producer: Any = app.producer
    producer = faust_producer._ensure_producer()  # the aiokafka producer Faust started
    open_batches: dict[tuple[str, int], Any] = {}
    sent: dict[int, Awaitable[Any]] = {}  # id(batch) -> its delivery
    acks: list[Any] = []  # a record's batch, or its delivery when sent on its own
    for record in records:
        if record.partition is None:
            args = (record.key, record.value, None, None, list(record.headers))
            acks.append(await faust_producer.send(record.topic, *args))
            continue
        tp = (record.topic, record.partition)
        batch = open_batches.get(tp)
        if batch is None:
            batch = open_batches[tp] = producer.create_batch()
        headers = record.headers if isinstance(record.headers, list) else list(record.headers)
        fields = {"key": record.key, "value": record.value, "headers": headers}
        if batch.append(timestamp=None, **fields) is None:  # full: send it, start another
            sent[id(batch)] = await producer.send_batch(batch, tp[0], partition=tp[1])
            batch = open_batches[tp] = producer.create_batch()
            batch.append(timestamp=None, **fields)  # an empty batch takes any record
        acks.append(batch)
    for (topic, partition), batch in open_batches.items():
        sent[id(batch)] = await producer.send_batch(batch, topic, partition=partition)
    return [sent.get(id(ack), ack) for ack in acks]


def _changelog_key(key: str) -> bytes:
    """The key as Faust writes it to the changelog (the table's `json` key serializer)."""
    return orjson.dumps(key)


def _consumer_class(fetch_max_wait_ms: int, inbox: Inbox) -> type:
    """Faust's aiokafka consumer, with our fetch wait, on the app's own event loop.

    aiokafka keeps one fetch in flight per broker, for the partitions with nothing buffered
    when it was sent: records arriving on another partition wait until that fetch returns,
    up to `fetch_max_wait_ms` (see `KafkaSettings`). With Faust's 1500 ms the benchmark's
    agent sat idle 70 % of the time while answers waited 1.7 s (p50) to be fetched.

    Faust runs aiokafka's consumer in a thread with a loop of its own, and hands every
    fetch, commit and seek to it through a method queue (rebalance callbacks come back
    through another). Under load the two threads fought over the GIL: a fetch response
    waited for the busy main thread to let go of it (up to the 5 ms switch interval), and
    its records then crossed back through the queue. Here the same service runs on the
    app's loop (`thread_loop` is that loop) and `call_thread` calls the consumer directly;
    the queue in the other direction still works, as tasks on the one loop. Nothing of
    the scheduler blocks the loop for long (a batch takes milliseconds; recovery yields),
    so aiokafka's heartbeats keep their pace.
    """

    class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):  # type: ignore[misc]
        def __init__(self, *args: Any, loop: asyncio.AbstractEventLoop, **kwargs: Any) -> None:
            super().__init__(*args, loop=loop, thread_loop=loop, **kwargs)
            # the served task, held: the event loop keeps only weak references to tasks
            self._serving: asyncio.Future[None] | None = None

        async def start(self) -> None:
            # mode's `ServiceThread.start`, serving as a task where it would start a thread
            assert not self._thread_started.is_set()
            self._thread_started.set()
            self._thread_running = self.parent_loop.create_future()
            self._serving = asyncio.ensure_future(self._serve())
            try:
                await self._thread_running  # set once started, or to the start's error
            finally:
                self._thread_running = None

        async def call_thread(self, fun: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            return await maybe_async(fun(*args, **kwargs))

        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = fetch_max_wait_ms  # read when it starts
            return consumer

    class Consumer(faust_aiokafka.Consumer):  # type: ignore[misc]
        def _new_consumer_thread(self) -> ConsumerThread:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

        async def _drain_messages(self, fetcher: Any) -> None:
            await _drain_messages(self, fetcher, inbox)

    return Consumer


async def _drain_messages(consumer: Any, fetcher: Any, inbox: Inbox) -> None:
    """Faust's `Consumer._drain_messages` (faust-streaming 0.15), delivering each record at
    once when its delivery does not have to wait.

    Faust hands every fetched record to the conductor through `wait_first(callback,
    suspend_flow)`: four tasks and an `asyncio.wait` per record, and at least one
    event-loop turn each. The agent's loop shares those turns, so under load records
    reached it about a dozen per batch while a backlog of a second's worth waited here.
    Here the callback is started directly; only when it has to wait (flow control
    suspended for a rebalance, a full stream buffer) does the rest of it run the way
    Faust's does, abandoned if the flow stops meanwhile. Everything else is Faust's loop.
    """
    getmany = consumer.getmany
    consumer_should_stop = consumer._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    yield_every = 100
    since_yield = 0
    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            consumer.diag.set_flag(faust_consumer.CONSUMER_FETCHING)
            records = getmany(timeout=1.0)
            await consumer.sleep(0)
            if not consumer.should_stop:
                async for tp, message in records:
                    since_yield += 1
                    if since_yield > yield_every:
                        await asyncio.sleep(0)
                        since_yield = 0
                    await _take(consumer, tp, message, inbox)
                consumer.diag.unset_flag(faust_consumer.CONSUMER_FETCHING)
    except consumer.consumer_stopped_errors:
        if consumer.transport.app.should_stop:
            log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if consumer.transport.app.should_stop:
            log.info("Consumer shutting down for user cancel.")
            return
        raise
    finally:
        consumer.diag.unset_flag(faust_consumer.CONSUMER_FETCHING)


async def _take(consumer: Any, tp: Any, message: Any, inbox: Inbox) -> None:
    """One fetched record, as Faust's loop body: gaps, commit cadence, delivery, position.

    A record of the agent's topics goes to its inbox; any other through Faust's conductor.
    """
    offset = message.offset
    read_offset = consumer._read_offset[tp]
    if read_offset is not None and offset < read_offset:
        return  # fetched again after a seek: Faust drops it too
    gap = bool(read_offset) and offset - read_offset > 1  # Faust skips a gap after offset 0
    if gap and consumer.app.topics.acks_enabled_for(message.topic):
        await consumer._add_gap(tp, read_offset + 1, offset)
    commit_every = consumer._commit_every
    if commit_every is not None and consumer._n_acked >= commit_every:
        consumer._n_acked = 0
        await consumer.commit()
    if message.topic in inbox.topics:
        await consumer.app.flow_control.acquire()  # as Faust's conductor waits
        await inbox.put(message)
    else:
        await _deliver(consumer, consumer.callback(message))
    consumer._read_offset[tp] = offset


async def _deliver(consumer: Any, delivery: Coroutine[Any, Any, None]) -> None:
    """Run `delivery` to its first wait; if it has one, finish it as Faust would."""
    try:
        awaited = delivery.send(None)
    except StopIteration:
        return
    await consumer.wait_first(_Resumed(delivery, awaited), consumer.suspend_flow.wait())


class _Resumed:
    """The rest of a coroutine already run up to `awaited` (what it yielded there): awaiting
    this drives it exactly as awaiting it from the start would have from that point."""

    def __init__(self, coroutine: Coroutine[Any, Any, Any], awaited: Any) -> None:
        self.coroutine = coroutine
        self.awaited = awaited

    def __await__(self) -> Generator[Any, Any, Any]:
        coroutine, awaited = self.coroutine, self.awaited
        while True:
            try:
                sent = yield awaited
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as exc:  # cancellation included: the coroutine decides
                try:
                    awaited = coroutine.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    awaited = coroutine.send(sent)
                except StopIteration as stop:
                    return stop.value


class Inbox:
    """Input records on their way from the consumer to the agent task, in batches.

    Faust hands each record to its conductor, which decodes it into an event for a channel
    queue, from which a stream takes it, with sensors, a current event and an ack on each
    step: about a tenth of the saturated scheduler's main thread (py-spy, bench/README.md).
    The consumer's drain loop (`_take`) puts the records of the agent's topics here
    instead, and the agent (`_agent`) takes them as batches: every record waiting, at most
    `within` seconds after the first of them arrived (each batch costs two round trips to
    the broker whatever its size, so an idle agent waits that long for others to share
    them). `put` waits while `max_` are waiting.
    """

    def __init__(self, topics: Iterable[str], max_: int) -> None:
        self.topics = frozenset(topics)
        self.max = max_
        self.pending: list[Any] = []
        self.first_at = 0.0
        self.arrived = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()

    async def put(self, message: Any) -> None:
        while len(self.pending) >= self.max:
            self.room.clear()
            await self.room.wait()
        if not self.pending:
            self.first_at = time.monotonic()
        self.pending.append(message)
        self.arrived.set()

    async def take(self, within: float) -> list[Any]:
        """The next batch (never empty)."""
        while not self.pending:
            self.arrived.clear()
            await self.arrived.wait()
        wait = self.first_at + within - time.monotonic()
        if wait > 0 and len(self.pending) < self.max:
            await asyncio.sleep(wait)
        return self.clear()

    def clear(self) -> list[Any]:
        """Take every waiting record out."""
        taken, self.pending = self.pending, []
        self.room.set()
        return taken


def _agent(
    app: faust.App, shell: Shell, inbox: Inbox, within: float
) -> Callable[[], Awaitable[None]]:
    """The agent: batches from the inbox through the shell, each acked once it is handled.

    A record is tracked as taken (Faust's `wait_empty` waits for it at a rebalance) and acked
    (its offset may be committed) only once the shell handled it; records fetched for an
    assignment that is over (another generation, or the flow suspended for a rebalance)
    are dropped unacked, and fetched again from the committed offset by their next owner.
    One task handles every assigned partition in order (faust #606: with concurrency > 1
    offsets can be committed past an unfinished record).
    """

    async def schedule() -> None:
        consumer: Any = app.consumer
        monitor: Any = app.monitor
        while not app.should_stop:
            messages = await inbox.take(within)
            generation = app.consumer_generation_id
            if not app.flow_control.is_active():
                continue
            taken = [m for m in messages if m.generation_id == generation]
            now = monitor.time()
            for message in taken:
                message.tracked = True
                consumer.track_message(message)
                # what Faust's stream reports, for its check that partitions keep moving
                monitor.stream_inbound_time[message.tp] = now
            try:
                await shell.on_records(
                    [
                        Record(m.value, m.headers, m.key, m.topic, m.partition, m.offset)
                        for m in taken
                    ]
                )
            except Exception as exc:  # on_records handles every record: this is a bug
                log.critical("the agent failed; stopping the worker", exc_info=True)
                await app.crash(exc)
                return
            for message in taken:
                consumer.ack(message)

    return schedule


@dataclass
class Scheduler:
    """The app and what its views and tests look at."""

    app: faust.App
    shell: Shell
    table: Any
    ready: asyncio.Event


def create_app(settings: Settings) -> Scheduler:
    """Build the Faust app for `settings` (nothing connects until the worker starts)."""
    kafka = settings.kafka
    topics = Topics(kafka.topic_prefix)
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{kafka.bootstrap_servers.replace(',', ';kafka://')}",
        store=settings.store,
        datadir=settings.data_dir,
        topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.replication_factor,
        topic_allow_declare=True,
        topic_disable_leader=True,
        processing_guarantee="at_least_once",
        producer_acks=-1,
        # Faust's default (16 KiB) holds two or three states: a batch's changelog writes
        # then go out as many small requests.
        producer_max_batch_size=256 * 1024,
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=0,
        web_enabled=True,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_router_enabled=False,
        web_tables_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        web_metrics_enabled=False,
        Table=DurableTable,
        broker_commit_interval=settings.commit_interval_s,
        broker_session_timeout=settings.session_timeout_s,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_heartbeat_interval=max(0.5, settings.session_timeout_s / 6),
    )
    # this app's transport instance only (Faust has no setting for the fetch wait)
    inputs = app.topic(
        topics.executions_commands,
        topics.steps_completed,
        key_type=bytes,
        value_type=bytes,
        value_serializer="raw",
        key_serializer="raw",
    )
    app.topics.add(inputs)  # subscribed (with acks) like an agent's topic
    inbox = Inbox(inputs.topics, settings.batch_max)
    app.transport.Consumer = _consumer_class(kafka.fetch_max_wait_ms, inbox)  # type: ignore[misc]
    table = app.Table("executions", key_type=str, value_type=bytes, partitions=kafka.partitions)
    assert isinstance(table, DurableTable)
    table.write_delay_s = settings.write_delay_s
    metrics = Metrics()

    async def send(records: Sequence[Outgoing]) -> list[Awaitable[Any]]:
        return await send_records(app, records)

    shell = Shell(
        table,
        send,
        topics,
        source=settings.source,
        consumer_name=settings.app_id,
        retention_s=settings.retention_s,
        partitions=kafka.partitions,
        metrics=metrics,
        persist=table.persist,
    )
    ready = asyncio.Event()
    app.task(_agent(app, shell, inbox, settings.batch_within_s))
    _on_rebalance(app, table, shell, topics, ready, inbox)
    app.task(_timer_task(app, shell, table, metrics, topics, ready, settings.timer_tick_s))
    _add_views(app, shell, metrics, ready)
    return Scheduler(app=app, shell=shell, table=table, ready=ready)


def _on_rebalance(
    app: faust.App, table: Any, shell: Shell, topics: Topics, ready: asyncio.Event, inbox: Inbox
) -> None:
    """Revocation drops the in-memory indexes; recovery rebuilds them and resends outboxes."""

    async def on_revoked(sender: Any, *args: Any, signal: Any = None, **_: Any) -> None:
        # Faust waited for every taken record to be acked (so flushed); the outbox clears
        # written since are still ours to send until the rebalance completes.
        ready.clear()
        inbox.clear()  # records of the old assignment, none of them taken
        await _persist_quietly(table)
        table.forget()
        shell.revoked()

    app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]

    async def on_recovered() -> None:
        await _rewind_uncommitted(app, topics)
        owned = {
            tp.partition
            for tp in app.assignor.assigned_actives()
            if tp.topic == topics.executions_commands
        }
        resent = await shell.recovered(owned)
        log.info(
            "recovered partitions %s: %d timers, %d outboxes resent",
            sorted(owned),
            len(shell.heap),
            resent,
        )
        heap.settle()  # the recovered table is long-lived: out of the collector's passes
        ready.set()

    table.on_recover(on_recovered)

    async def on_shutdown(sender: Any, *args: Any, **_: Any) -> None:
        await _persist_quietly(table)

    app.on_before_shutdown.connect(on_shutdown)  # type: ignore[arg-type]


async def _persist_quietly(table: Any) -> None:
    """Send what is left dirty (outbox clears); a failure only means resends later."""
    try:
        await table.persist()
    except Exception:
        log.warning("could not persist the table's last changes", exc_info=True)


async def _rewind_uncommitted(app: faust.App, topics: Topics) -> None:
    """Seek input partitions that have no committed offset back to their beginning.

    Works around faust-streaming #629: records fetched while a rebalance is under way are
    dropped (generation changed, or partition not yet active), but the client's position has
    moved past them. Faust then seeks back only partitions with a committed offset above 0,
    so a partition nobody committed yet (e.g. taken over from a scheduler killed before its
    first commit) would silently skip those records. Runs before Faust resumes the partitions.
    """
    consumer: Any = app.consumer
    inputs = {topics.executions_commands, topics.steps_completed}
    committed = await consumer.seek_to_committed()
    for tp, offset in committed.items():
        if tp.topic in inputs and (offset is None or offset <= 0):
            await consumer.seek(tp, 0)


def _timer_task(
    app: faust.App,
    shell: Shell,
    table: DurableTable,
    metrics: Metrics,
    topics: Topics,
    ready: asyncio.Event,
    tick_s: float,
) -> Callable[[], Awaitable[None]]:
    """The background loop that fires due timers (and refreshes the lag gauges)."""

    async def fire_timers() -> None:
        last_lag = 0.0
        while not app.should_stop:
            try:
                if ready.is_set():
                    await shell.fire_due()
                    if table.dirty:  # outbox clears held back, when no batch took them
                        await table.persist(())
                    if time.monotonic() - last_lag > 5.0:
                        last_lag = time.monotonic()
                        _update_lag(app, metrics, topics)
            except Exception:
                log.exception("timer tick failed")
            await asyncio.sleep(tick_s)

    return fire_timers


def _add_views(app: faust.App, shell: Shell, metrics: Metrics, ready: asyncio.Event) -> None:
    """`/metrics`, `/health/live`, `/health/ready` (ready once recovery finished)."""

    async def metrics_view(web: Any, request: Any) -> Any:
        body = generate_latest(metrics.registry)
        return aioweb.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def live_view(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    async def ready_view(web: Any, request: Any) -> Any:
        if ready.is_set() and not app.rebalancing:
            return web.json({"status": "ready", "partitions": sorted(shell.owned)})
        return web.json({"status": "recovering"}, status=503)

    app.page("/metrics")(metrics_view)
    app.page("/health/live")(live_view)
    app.page("/health/ready")(ready_view)


def _update_lag(app: Any, metrics: Metrics, topics: Topics) -> None:
    """Records behind the end of each assigned input partition (highwater - position)."""
    consumer = app.consumer
    for tp in app.assignor.assigned_actives():
        if tp.topic not in (topics.executions_commands, topics.steps_completed):
            continue
        try:
            high = consumer.highwater(tp)
            position = consumer._committed_offset.get(tp)
        except Exception:
            log.debug("no lag for %s", tp, exc_info=True)
            continue
        if high is not None and position is not None:
            metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - position))
