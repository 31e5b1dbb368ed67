"""The Faust app: its input topics, the `executions` table, the agent and the timer task.

Wiring only: every decision is in `domain.decide()`, every record-level step in
`agents.Shell`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Sequence,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import faust
import orjson
from aiohttp import web as aioweb
from faust import tables as faust_tables
from faust.tables import recovery as faust_recovery
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import AppT
from mode.utils.futures import maybe_async
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cadenza_common.events import Topics
from cadenza_scheduler import fetch, heap, intake
from cadenza_scheduler.agents import Outgoing, Record, Shell, partition_of
from cadenza_scheduler.metrics import Metrics
from cadenza_scheduler.produce import Producer
from cadenza_scheduler.settings import Settings
from cadenza_scheduler.specs import entry_partition, is_entry

log = logging.getLogger(__name__)


class _App(faust.App):  # type: ignore[misc]
    """Faust's app without its `Monitor` sensor.

    Faust calls its sensors for every record (in, stream in and out, acked) and every table
    get and set; its one default sensor, the `Monitor`, keeps statistics for Faust's own
    web views, which are off here (the scheduler's metrics are its own, `metrics.Metrics`).
    Those calls and the Monitor's sampling task were ~2 % of the scheduler's CPU under load.
    Faust's consumer still updates `app.monitor` directly (end offsets, commits): plain
    bookkeeping on an object nobody reads.
    """

    inbox: Inbox | None = None  # the input topic's records go here (see `Inbox`)
    intake: intake.Intake | None = None  # fetches the input topic (see `cadenza_scheduler.intake`)
    direct_producer: Producer  # the changelog writes and emits go out here (`send_records`)

    def on_init_dependencies(self) -> Iterable[Any]:
        dependencies = super().on_init_dependencies()  # adds the Monitor to the sensors
        self.sensors.remove(self.monitor)  # before the boot strategy iterates them
        return dependencies

    def on_rebalance_start(self) -> None:
        super().on_rebalance_start()
        if not self._rebalancing_sensor_state:
            # With no sensor, the sensors' state for the rebalance is empty, and Faust logs
            # "Missing sensor state" as a warning when the rebalance returns and ends.
            self._rebalancing_sensor_state = {None: None}


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
        self.persisted_at = 0.0  # when a persist last handed records to the producer
        # one persist hands its records to the producer at a time: a concurrent one (the
        # timer's) must not take a dirty key and leave it unsent while another waits for it
        self._sending = asyncio.Lock()

    def partition_for_key(self, key: Any) -> int:
        # The partition of the execution's input records (same key, same partitioner), not
        # Faust's "current event": the agent takes records in batches across partitions.
        # A spec entry goes to the partition of the executions that name it.
        key = str(key)
        if is_entry(key):
            return entry_partition(key)
        return partition_of(key, self.partitions or 1)

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
            # Clean as of the values just read: a write while the producer takes them (the
            # agent applies a batch while another persists) makes its key dirty again, so
            # the next persist sends it instead of waiting for this older value.
            for key in sending:
                self.dirty.pop(key, None)
            try:
                acks = await send_records(self.app, records)
            except BaseException:
                now = time.monotonic()
                for key in sending:
                    self.dirty.setdefault(key, now)
                raise
            for key, ack in zip(sending, acks, strict=True):
                self.last_write[key] = ack
            if sending:
                self.persisted_at = time.monotonic()
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

    def idle(self) -> bool:
        """Whether no persist sent anything for `write_delay_s`: the writes held back that
        long then go out on their own. While batches are persisted, each takes them along
        (`_due`); a persist of its own each timer tick was ~45 of the scheduler's ~180
        produce requests a second at 700 transitions/s."""
        return time.monotonic() - self.persisted_at >= self.write_delay_s

    def forget(self) -> None:
        """Drop the write bookkeeping (the partitions are gone)."""
        self.dirty.clear()
        self.last_write.clear()


async def send_records(app: AppT, records: Sequence[Outgoing]) -> list[Awaitable[Any]]:
    """Hand `records` to the producer, in order, one batch per partition; return an awaitable
    a record (its batch's) that resolves once the broker acknowledged it.

    Records with a partition go through the scheduler's own produce requests
    (`produce.Producer`, on the client of the producer Faust started): aiokafka's producer
    path cost the main thread more than twice as much a batch. A record without a
    partition (the DLQ's) goes through Faust's `send` (the producer's partitioner).
    """
    faust_producer: Any = app.producer
    direct: Producer = app.direct_producer  # type: ignore[attr-defined]
    sent = iter(direct.send([r for r in records if r.partition is not None]))
    acks: list[Awaitable[Any]] = []
    for record in records:
        if record.partition is None:
            args = (record.key, record.value, None, None, list(record.headers))
            acks.append(await faust_producer.send(record.topic, *args))
        else:
            acks.append(next(sent))
    return acks


class _Recovery(faust_recovery.Recovery):  # type: ignore[misc]
    """Faust's recovery, finishing with the stream partitions seeked before they resume
    (`on_recovery_completed` is faust-streaming 0.15's, reordered; check it on upgrades).

    Faust's `on_recovery_completed` resumes the input partitions, then seeks them to their
    committed offsets (`perform_seek`: one round trip per partition, ~0.2 s for 36), then
    resumes the flow control, which clears every stream's queue. Records fetched in
    between were delivered into those queues and dropped unacked; `perform_seek` also
    reset the read offsets under the batch being delivered, so the next record looked like
    a gap and the commit moved past the dropped ones: after a restart with completions
    waiting, whole runs of them were never applied (the scheduler SIGKILL fault test, 113
    of 300 executions stuck). Here the seek comes first, and nothing awaits between
    resuming the partitions and resuming the flow: no record of an input partition is
    delivered before the queues are cleared.
    """

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        app: Any = self.app
        consumer = app.consumer
        self.log.info("Restore complete!")
        await app.on_rebalance_complete.send()
        self._set_recovery_ended()
        callbacks = [
            asyncio.ensure_future(
                table.on_recovery_completed(
                    self.actives_for_table[table], self.standbys_for_table[table]
                )
            )
            for table in self.tables.values()
        ]
        if callbacks:
            await asyncio.wait(callbacks)
        assignment = consumer.assignment()
        if assignment and app.consumer_generation_id == generation_id:
            self.log.info("Seek stream partitions to committed offsets.")
            await self._wait(consumer.perform_seek(), timeout=app.conf.broker_request_timeout)
            inputs = {tp for tp in assignment if not self._is_changelog_tp(tp)}
            await _rewind_uncommitted(consumer, inputs)
        if app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again (generation %s)", generation_id)
            return
        # from here to the flow's resumption nothing awaits (see the class docstring)
        consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
        self.completed.set()
        app.flow_control.resume()
        consumer.resume_flow()
        await app._fetcher.maybe_start()
        self.tables.on_actives_ready()
        if not app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        app.on_rebalance_end()
        self.log.info("Worker ready")


class _TableManager(faust_tables.TableManager):  # type: ignore[misc]
    """Faust's table manager with `_Recovery`."""

    @property
    def recovery(self) -> faust_recovery.Recovery:
        if self._recovery is None:
            self._recovery = _Recovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


def _changelog_key(key: str) -> bytes:
    """The key as Faust writes it to the changelog (the table's `json` key serializer)."""
    return orjson.dumps(key)


def _consumer_class(fetch_max_wait_ms: int) -> type:
    """Faust's aiokafka consumer, with our fetch wait, on the app's own event loop.

    aiokafka keeps one fetch in flight per broker, for the partitions with nothing buffered
    when it was sent: records arriving on another partition wait until that fetch returns,
    up to `fetch_max_wait_ms` (see `KafkaSettings`). With Faust's 1500 ms the benchmark's
    agent sat idle 70 % of the time while answers waited 1.7 s (p50) to be fetched. The
    input topic is now fetched by `intake.Intake` (started on the consumer here, beside
    Faust's drain loop), whose long poll waits as long; aiokafka's fetcher keeps the
    changelog.

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

        async def on_start(self) -> None:
            await super().on_start()  # the aiokafka consumer started, not yet subscribed
            _enable_intake(self.app, self._consumer)

    class Consumer(faust_aiokafka.Consumer):  # type: ignore[misc]
        def _new_consumer_thread(self) -> ConsumerThread:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

        async def _drain_messages(self, fetcher: Any) -> None:
            await _drain_with_intake(self, fetcher)

        async def _wait_next_records(self, timeout: float) -> Any:
            return await _next_records(self)

    return Consumer


async def _next_records(self: Any) -> Any:
    """Faust's `Consumer._wait_next_records`, asking aiokafka for the partitions active
    now, as a copy.

    Faust hands aiokafka its live set of active partitions. When recovery pauses
    the changelog partitions while that fetch waits, the set turns empty, and
    aiokafka reads an empty set as "every partition": it returned the input
    partitions' buffered records, moved their positions past them, and Faust
    dropped them as inactive. A partition without a committed offset is not
    seeked back afterwards, so those records were lost (a restart with answers
    waiting on partitions never committed).
    """
    if not self.flow_active:
        await self.wait(self.can_resume_flow)
    try:
        self.not_waiting_next_records.set()
        active = set(self._get_active_partitions())
        if not active:
            await self.sleep(0.1)
            return {}, active
        # the set is fixed for this call: partitions resumed meanwhile are fetched
        # by the next one, so this one waits briefly (Faust's 1 s held every
        # resumed partition back that long after each rebalance)
        records = await self._getmany(active_partitions=active, timeout=0.1)
        return records, active
    finally:
        self.not_waiting_next_records.set()


def _enable_intake(app: Any, kafka_consumer: Any) -> None:
    """Leave the input topic to the app's `Intake`, if it has one the consumer supports."""
    app_intake = app.intake
    if app_intake is not None and intake.supported(kafka_consumer):
        intake.leave_to_intake(kafka_consumer, app_intake.topic)
        app_intake.enabled = True


async def _drain_with_intake(consumer: Any, fetcher: Any) -> None:
    """Faust's drain loop (`_drain_messages`: the changelog while it recovers) with the
    input topic's own fetch loop beside it, when the intake is enabled; both end together."""
    app_intake = consumer.app.intake
    if app_intake is None or not app_intake.enabled:
        await _drain_messages(consumer, fetcher)
        return
    fetching = asyncio.ensure_future(app_intake.run(consumer, _take))
    fetching.add_done_callback(_intake_ended)
    try:
        await _drain_messages(consumer, fetcher)
    finally:
        fetching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await fetching


def _intake_ended(fetching: asyncio.Future[None]) -> None:
    """Log the intake's end when it failed: its rounds retry their errors, so this is a
    defect, and the input topic is no longer read."""
    if not fetching.cancelled() and fetching.exception() is not None:
        log.critical("the input topic's fetch loop failed", exc_info=fetching.exception())


async def _drain_messages(consumer: Any, fetcher: Any) -> None:
    """Faust's `Consumer._drain_messages` (faust-streaming 0.15), delivering each record at
    once when its delivery does not have to wait.

    Faust hands every fetched record to the conductor through `wait_first(callback,
    suspend_flow)`: four tasks and an `asyncio.wait` per record, and at least one
    event-loop turn each. The agent's loop shares those turns, so under load records
    reached it about a dozen per batch while a backlog of a second's worth waited here.
    Here (`_take`) the input topic's records go to the agent's `Inbox`, and the others
    (the table's changelog while it recovers) to the conductor with its callback started
    directly; only when that has to wait (flow control suspended for a rebalance, a full
    buffer) does the rest of it run the way Faust's does, abandoned if the flow stops
    meanwhile. Everything else is Faust's loop.
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
                    await _take(consumer, tp, message)
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


async def _take(consumer: Any, tp: Any, message: Any) -> None:
    """One fetched record, as Faust's loop body: gaps, commit cadence, delivery, position."""
    offset = message.offset
    read_offset = consumer._read_offset[tp]
    if read_offset is not None and offset < read_offset:
        return  # fetched again after a seek: Faust drops it too
    gap = bool(read_offset) and offset - read_offset > 1  # Faust skips a gap after offset 0
    if gap and consumer.app.topics.acks_enabled_for(message.topic):
        # our input topics have no transactions and no compaction: offsets are contiguous
        log.warning("offsets %d-%d of %s skipped as a gap", read_offset + 1, offset - 1, tp)
        await consumer._add_gap(tp, read_offset + 1, offset)
    commit_every = consumer._commit_every
    if commit_every is not None and consumer._n_acked >= commit_every:
        consumer._n_acked = 0
        await consumer.commit()
    inbox = consumer.app.inbox
    if inbox is not None and message.topic == inbox.topic:
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
    """The input topic's fetched records, handed from the consumer to the agent directly.

    Faust delivers a record through its conductor to a channel, wraps it in an event, and
    hands it over from a stream iterator one loop turn at a time, with acks counted per
    event: ~13 % of the saturated scheduler's main thread, for records the agent takes in
    batches anyway (bench/README.md, scheduler session 18). Here `_take` puts the record
    (Faust's `Message`) here, as the conductor would deliver it:

    - it waits while the flow is suspended (a rebalance), as the conductor does, and drops
      a record fetched in an older consumer generation (fetched again by its new owner);
    - it tracks the record as unacked (`Consumer.track_message`), so a rebalance waits for
      the batch holding it and its ack counts towards the commit (`Consumer.ack`);
    - the inbox is one of the queues Faust's flow control clears (`manage_queue`): when a
      rebalance starts and when the flow resumes, what it holds is dropped unacked and
      fetched again from the committed offsets, as Faust drops what its channels hold.

    `batches` gives the agent the records in order, up to `max_` at a time, and at most
    `within` seconds after the first of them arrived. It holds at most `maxsize` records
    (Faust's `stream_buffer_maxsize`, as its channels): a full inbox stops the drain loop,
    so aiokafka stops fetching, and a backlog stays on the broker, not in memory.
    """

    def __init__(self, app: faust.App, topic: str, maxsize: int) -> None:
        self.app = app
        self.topic = topic
        self.maxsize = maxsize
        self.messages: collections.deque[Any] = collections.deque()
        self.arrived = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        self.first_at = 0.0
        app.flow_control.manage_queue(self)  # type: ignore[arg-type]  # it only calls clear()

    async def put(self, message: Any) -> None:
        app = self.app
        while True:
            await app.flow_control.acquire()
            if len(self.messages) < self.maxsize:
                break
            self.room.clear()
            await self.room.wait()
        if message.generation_id != app.consumer_generation_id:
            return
        if not message.tracked:
            message.tracked = True
            app.consumer.track_message(message)
        if not self.messages:
            self.first_at = time.monotonic()
        self.messages.append(message)
        self.arrived.set()

    def clear(self) -> None:
        """Drop what is held (Faust's flow control calls this); the records stay unacked."""
        self.messages.clear()
        self.arrived.clear()
        self.room.set()

    def take(self, limit: int) -> list[Any]:
        """Up to `limit` records, oldest first."""
        messages = self.messages
        taken = [messages.popleft() for _ in range(min(limit, len(messages)))]
        if not messages:
            self.arrived.clear()
        self.room.set()
        return taken

    async def batches(self, max_: int, within: float) -> AsyncIterator[list[Any]]:
        while True:
            await self.arrived.wait()
            wait = self.first_at + within - time.monotonic()
            if wait > 0 and len(self.messages) < max_:
                await asyncio.sleep(wait)
            batch = self.take(max_)
            if batch:
                yield batch


@dataclass
class Scheduler:
    """The app and what its views and tests look at."""

    app: faust.App
    shell: Shell
    table: Any
    ready: asyncio.Event
    collector: heap.Collector


def create_app(settings: Settings) -> Scheduler:
    """Build the Faust app for `settings` (nothing connects until the worker starts)."""
    kafka = settings.kafka
    topics = Topics(kafka.topic_prefix)
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    app = _App(
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
        TableManager=_TableManager,
        broker_commit_interval=settings.commit_interval_s,
        broker_session_timeout=settings.session_timeout_s,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_heartbeat_interval=max(0.5, settings.session_timeout_s / 6),
    )
    # this app's transport instance only (Faust has no setting for the fetch wait)
    app.transport.Consumer = _consumer_class(kafka.fetch_max_wait_ms)  # type: ignore[misc]
    fetch.install()  # fetch requests encoded and their responses decoded directly
    metrics = Metrics()
    app.direct_producer = Producer(
        # the client of the aiokafka producer Faust started (looked up when first sending)
        lambda: cast(Any, app.producer)._ensure_producer().client,
        max_batch_bytes=app.conf.producer_max_batch_size,
        metrics=metrics,
    )
    table = app.Table("executions", key_type=str, value_type=bytes, partitions=kafka.partitions)
    assert isinstance(table, DurableTable)
    table.write_delay_s = settings.write_delay_s

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
    collector = heap.Collector(settings.gc_thresholds)
    inputs = app.topic(
        topics.executions_commands,
        key_type=bytes,
        value_type=bytes,
        value_serializer="raw",
        key_serializer="raw",
    )

    inbox = app.inbox = Inbox(app, topics.executions_commands, app.conf.stream_buffer_maxsize)
    app.intake = intake.Intake(topics.executions_commands, metrics)

    @app.agent(inputs, concurrency=1)
    async def schedule(stream: Any) -> None:
        # The agent subscribes the topic; its records reach the inbox, not this stream.
        # A batch is acked only once the shell handled it (see the package docstring).
        consumer = app.consumer
        async for messages in inbox.batches(settings.batch_max, settings.batch_within_s):
            await shell.on_records(
                [
                    Record(m.value, m.headers, m.key, m.topic, m.partition, m.offset)
                    for m in messages
                ]
            )
            for message in messages:
                consumer.ack(message)
            collector.between_batches()  # the batch's objects are gone: a cheap pass

    _on_rebalance(app, table, shell, topics, ready)
    app.task(_timer_task(app, shell, table, metrics, topics, ready, settings.timer_tick_s))
    _add_views(app, shell, metrics, ready)
    return Scheduler(app=app, shell=shell, table=table, ready=ready, collector=collector)


def _on_rebalance(
    app: faust.App, table: Any, shell: Shell, topics: Topics, ready: asyncio.Event
) -> None:
    """Revocation drops the in-memory indexes; recovery rebuilds them and resends outboxes."""

    async def on_revoked(sender: Any, *args: Any, signal: Any = None, **_: Any) -> None:
        # Faust waited for every taken record to be acked (so flushed); the outbox clears
        # written since are still ours to send until the rebalance completes.
        ready.clear()
        await _persist_quietly(table)
        table.forget()
        shell.revoked()

    app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]

    async def on_recovered() -> None:
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


async def _rewind_uncommitted(consumer: Any, partitions: Iterable[Any]) -> None:
    """Seek those of `partitions` that have no committed offset back to their beginning.

    Works around faust-streaming #629: records fetched while a rebalance is under way are
    dropped (generation changed, or partition not yet active), but the client's position has
    moved past them. Faust then seeks back only partitions with a committed offset above 0,
    so a partition nobody committed yet (e.g. taken over from a scheduler killed before its
    first commit) would silently skip those records. Runs right after `perform_seek`, which
    recorded the committed offsets (None for none or 0), before the partitions resume.
    """
    for tp in partitions:
        if consumer._committed_offset.get(tp) is None:
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
                    if table.dirty and table.idle():
                        await table.persist(())  # outbox clears held back, no batch took
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
        if tp.topic != topics.executions_commands:
            continue
        try:
            high = consumer.highwater(tp)
            position = consumer._committed_offset.get(tp)
        except Exception:
            log.debug("no lag for %s", tp, exc_info=True)
            continue
        if high is not None and position is not None:
            metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - position))
