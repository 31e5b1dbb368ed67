"""The intake's planning and response handling, on aiokafka's real subscription state and
real record batches (the broker's side is the integration tests')."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka.consumer.fetcher import (
    READ_COMMITTED,
    READ_UNCOMMITTED,
    Fetcher,
    OffsetResetStrategy,
)
from aiokafka.consumer.subscription_state import SubscriptionState
from aiokafka.structs import TopicPartition

from cadenza_scheduler import intake
from cadenza_scheduler.metrics import Metrics

from .records import record_batch

TOPIC = "in"
CHANGELOG = "changelog"
P0, P1, P2 = (TopicPartition(TOPIC, p) for p in range(3))
C0 = TopicPartition(CHANGELOG, 0)
NO_ERROR, NOT_LEADER, OUT_OF_RANGE = 0, 6, 1


@dataclass
class Cluster:
    leaders: dict[TopicPartition, int | None]

    def leader_for_partition(self, tp: TopicPartition) -> int | None:
        return self.leaders.get(tp, 1)


@dataclass
class Client:
    cluster: Cluster
    metadata_updates: int = 0
    # what `send` answers, and what happens while the request is out
    answer: Any = None
    meanwhile: Any = None
    _loop: Any = None  # what aiokafka's fetcher reads from its client
    _metadata_max_age_ms: int = 300_000

    def force_metadata_update(self) -> None:
        self.metadata_updates += 1

    quiet: set[int] = field(default_factory=set)  # brokers that never answer

    async def send(self, node_id: int, request: Any) -> Any:
        await asyncio.sleep(0)
        if node_id in self.quiet:
            await asyncio.Event().wait()
        if self.meanwhile is not None:
            self.meanwhile()
        return self.answer


@dataclass
class FetcherSettings:
    """The settings the intake reads from aiokafka's fetcher."""

    _check_crcs: bool = True
    _max_partition_fetch_bytes: int = 1 << 20
    _fetch_max_wait_ms: int = 100
    _fetch_min_bytes: int = 1
    _fetch_max_bytes: int = 50 << 20
    _client_rack: str | None = None
    _retry_backoff: float = 0.001
    _isolation_level: int = READ_UNCOMMITTED
    _default_reset_strategy: int = OffsetResetStrategy.EARLIEST


@dataclass
class Kafka:
    """The parts of an aiokafka consumer the intake reads."""

    _subscription: SubscriptionState
    _client: Client
    _fetcher: FetcherSettings = field(default_factory=FetcherSettings)


@dataclass
class FaustConsumer:
    active: set[TopicPartition]

    def _get_active_partitions(self) -> set[TopicPartition]:
        return self.active


@pytest.fixture
async def kafka() -> Kafka:
    subscription = SubscriptionState()  # needs the running loop
    subscription.subscribe(topics={TOPIC, CHANGELOG})
    subscription.assign_from_subscribed({P0, P1, P2, C0})
    return Kafka(subscription, Client(Cluster({})))


def batch(base_offset: int, count: int) -> bytes:
    """A record batch as the broker returns it, its records at `base_offset` onwards."""
    records = [
        (1_700_000_000_000 + i, b"k%d" % i, b"v%d" % i, [("ce_type", b"t")]) for i in range(count)
    ]
    return record_batch(records, base_offset)


def answer(partition: int, error: int, records: bytes | None) -> tuple[Any, ...]:
    """One partition of a FetchResponse v11 as the codec returns it."""
    return (partition, error, 100, 100, 0, None, -1, records)


def state(kafka: Kafka, tp: TopicPartition) -> Any:
    return kafka._subscription.subscription.assignment.state_value(tp)


def request(
    kafka: Kafka, offsets: dict[TopicPartition, int], generation: int = 1, node_id: int = 1
) -> intake.Fetch:
    """A request to `node_id` in `kafka`'s current assignment."""
    assignment = kafka._subscription.subscription.assignment
    return intake.Fetch(node_id, offsets, generation, assignment)


def received(kafka: Kafka, fetch: intake.Fetch, *partitions: tuple[Any, ...]) -> list[Any]:
    answer = [(TOPIC, list(partitions))]
    return list(intake.Intake(TOPIC, Metrics())._received(kafka, fetch, answer))


async def test_plan_asks_each_leader_for_the_active_positioned_partitions(kafka: Kafka) -> None:
    for tp, offset in ((P0, 5), (P1, 7), (C0, 0)):
        kafka._subscription.seek(tp, offset)
    kafka._client.cluster.leaders[P1] = 2
    consumer = FaustConsumer({P0, P1, P2, C0})

    fetches = intake.Intake(TOPIC, Metrics())._plan(kafka, consumer, generation=3)

    # P2 has no position yet (aiokafka's fetcher resets it); the changelog is not ours
    assert fetches == {1: request(kafka, {P0: 5}, 3), 2: request(kafka, {P1: 7}, 3, node_id=2)}


async def test_plan_skips_paused_partitions_and_refreshes_unknown_leaders(kafka: Kafka) -> None:
    for tp in (P0, P1, P2):
        kafka._subscription.seek(tp, 0)
    kafka._client.cluster.leaders[P2] = -1

    fetches = intake.Intake(TOPIC, Metrics())._plan(kafka, FaustConsumer({P1, P2}), 1)

    assert fetches == {1: request(kafka, {P1: 0})}
    assert kafka._client.metadata_updates == 1


async def test_plan_is_empty_without_an_active_assignment(kafka: Kafka) -> None:
    kafka._subscription.seek(P0, 0)
    kafka._subscription.unsubscribe()

    assert intake.Intake(TOPIC, Metrics())._plan(kafka, FaustConsumer({P0}), 1) == {}


async def test_records_become_faust_messages_and_the_position_moves_past_them(
    kafka: Kafka,
) -> None:
    kafka._subscription.seek(P0, 12)
    kafka._subscription.seek(P1, 4)
    fetch = request(kafka, {P0: 12, P1: 4}, 7)

    # P0's batch starts before the position asked for (10-13): 10 and 11 are skipped
    messages = received(kafka, fetch, answer(0, NO_ERROR, batch(10, 4)), answer(1, NO_ERROR, b""))

    assert [(m.tp, m.offset, m.key, m.value) for m in messages] == [
        (P0, 12, b"k2", b"v2"),
        (P0, 13, b"k3", b"v3"),
    ]
    first = messages[0]
    assert (first.topic, first.partition, first.generation_id) == (TOPIC, 0, 7)
    assert first.headers == (("ce_type", b"t"),)
    assert first.timestamp == pytest.approx(1_700_000_000.002)
    assert state(kafka, P0).position == 14
    assert state(kafka, P0).highwater == 100
    assert state(kafka, P1).position == 4  # nothing new


async def test_a_partition_seeked_while_the_request_was_out_keeps_the_seek(kafka: Kafka) -> None:
    kafka._subscription.seek(P0, 3)
    fetch = request(kafka, {P0: 3})
    kafka._subscription.seek(P0, 0)  # a rebalance's seek to the committed offset

    assert received(kafka, fetch, answer(0, NO_ERROR, batch(3, 2))) == []
    assert state(kafka, P0).position == 0


async def test_partition_errors_refresh_metadata_or_reset_the_offset(kafka: Kafka) -> None:
    kafka._subscription.seek(P0, 3)
    kafka._subscription.seek(P1, 9)
    fetch = request(kafka, {P0: 3, P1: 9})

    messages = received(kafka, fetch, answer(0, NOT_LEADER, None), answer(1, OUT_OF_RANGE, None))

    assert messages == []
    assert kafka._client.metadata_updates == 1
    assert state(kafka, P0).position == 3  # fetched again once the leader is known
    assert not state(kafka, P1).has_valid_position  # aiokafka's fetcher resets it
    assert state(kafka, P1).reset_strategy == OffsetResetStrategy.EARLIEST


async def test_a_corrupt_batch_is_fetched_again_and_the_other_partitions_go_on(
    kafka: Kafka, caplog: pytest.LogCaptureFixture
) -> None:
    kafka._subscription.seek(P0, 0)
    kafka._subscription.seek(P1, 0)
    raw = bytearray(batch(0, 2))
    raw[-1] ^= 0xFF
    fetch = request(kafka, {P0: 0, P1: 0})

    messages = received(
        kafka, fetch, answer(0, NO_ERROR, bytes(raw)), answer(1, NO_ERROR, batch(0, 1))
    )

    assert [(m.tp, m.offset) for m in messages] == [(P1, 0)]
    assert state(kafka, P0).position == 0  # read again by the next fetch
    assert state(kafka, P1).position == 1
    assert "Invalid CRC" in caplog.text


async def test_aiokafkas_fetcher_leaves_the_positioned_input_partitions_to_the_intake(
    kafka: Kafka,
) -> None:
    kafka._subscription.seek(P0, 0)
    kafka._subscription.seek(C0, 0)
    assignment = kafka._subscription.subscription.assignment

    without = intake._Without(assignment, TOPIC)

    assert sorted(without.tps) == sorted([P1, P2, C0])  # P1 and P2 await a reset
    assert without.state_value(P1) is assignment.state_value(P1)


async def test_only_read_uncommitted_consumers_are_supported(kafka: Kafka) -> None:
    assert intake.supported(kafka)
    kafka._fetcher._isolation_level = READ_COMMITTED  # aborted transactions not filtered

    assert not intake.supported(kafka)


async def test_aiokafkas_fetcher_asks_only_for_the_rest_once_left_to_the_intake(
    kafka: Kafka,
) -> None:
    for tp in (P0, P1, P2, C0):
        kafka._subscription.seek(tp, 0)
    assignment = kafka._subscription.subscription.assignment
    fetcher = Fetcher(kafka._client, kafka._subscription)
    fetcher._fetch_task.cancel()  # its own loop is not under test
    consumer = type("Consumer", (), {"_fetcher": fetcher})()

    intake.leave_to_intake(consumer, TOPIC)
    requests, resets, *_ = fetcher._get_actions_per_node(assignment)

    [(_, request)] = requests
    assert [(topic, [p[0] for p in parts]) for topic, parts in request.topics] == [(CHANGELOG, [0])]
    assert not resets
    state(kafka, P2).await_reset(OffsetResetStrategy.EARLIEST)  # offset out of range
    _, resets, *_ = fetcher._get_actions_per_node(assignment)
    assert dict(resets) == {1: [P2]}  # aiokafka's fetcher still resets input partitions


@dataclass
class Running:
    """A running Faust consumer: its active partitions, flow and generation; it stops
    when `stop()` is called. `fail_first` makes its first look at its partitions raise."""

    kafka: Kafka
    active: set[TopicPartition] = field(default_factory=set)
    fail_first: bool = False
    flow_active: bool = True
    looks: int = 0
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def _thread(self) -> Any:
        return type("Thread", (), {"_ensure_consumer": lambda _: self.kafka})()

    @property
    def app(self) -> Any:
        return type("App", (), {"consumer_generation_id": 1})()

    def _get_active_partitions(self) -> set[TopicPartition]:
        self.looks += 1
        if self.fail_first and self.looks == 1:
            raise RuntimeError("boom")
        if self.fail_first:
            self._stopped.set()
        return self.active

    def stop(self) -> None:
        self._stopped.set()


async def test_a_failing_round_is_logged_and_the_loop_goes_on(
    kafka: Kafka, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    consumer = Running(kafka, fail_first=True)

    await asyncio.wait_for(intake.Intake(TOPIC, metrics).run(consumer, take=None), 5)

    assert consumer.looks == 2
    assert "fetching the input topic failed" in caplog.text
    assert metrics.fetch_errors.labels("RuntimeError")._value.get() == 1


async def test_an_answer_to_an_older_assignment_is_dropped(kafka: Kafka) -> None:
    kafka._subscription.seek(P0, 0)
    out = request(kafka, {P0: 0})
    answered = type("Response", (), {"topics": [(TOPIC, [answer(0, NO_ERROR, batch(0, 2))])]})
    kafka._client.answer = answered

    def reassign() -> None:  # a rebalance while the request was out: same partitions
        kafka._subscription.assign_from_subscribed({P0, P1, P2, C0})
        kafka._subscription.seek(P0, 0)

    kafka._client.meanwhile = reassign
    assert list(await intake.Intake(TOPIC, Metrics())._fetch(kafka, out)) == []
    assert state(kafka, P0).position == 0

    kafka._client.meanwhile = None
    now = request(kafka, {P0: 0})
    messages = await intake.Intake(TOPIC, Metrics())._fetch(kafka, now)
    assert [m.offset for m in messages] == [0, 1]


async def test_messages_are_made_as_they_are_handed_over_the_positions_moved_first(
    kafka: Kafka,
) -> None:
    kafka._subscription.seek(P0, 0)
    kafka._subscription.seek(P1, 0)
    fetch = request(kafka, {P0: 0, P1: 0})
    both = [(TOPIC, [answer(0, NO_ERROR, batch(0, 3)), answer(1, NO_ERROR, batch(0, 2))])]

    messages = intake.Intake(TOPIC, Metrics())._received(kafka, fetch, both)

    assert (state(kafka, P0).position, state(kafka, P1).position) == (3, 2)
    assert next(messages).offset == 0  # one at a time, partition by partition
    assert [(m.partition, m.offset) for m in messages] == [(0, 1), (0, 2), (1, 0), (1, 1)]


async def test_an_answer_without_a_whole_batch_keeps_the_position(
    kafka: Kafka, caplog: pytest.LogCaptureFixture
) -> None:
    kafka._subscription.seek(P0, 5)
    cut = batch(5, 3)[:40]  # a batch's header and no more (brokers since KIP-74 never send it)

    assert received(kafka, request(kafka, {P0: 5}), answer(0, NO_ERROR, cut)) == []
    assert state(kafka, P0).position == 5  # not skipped: fetched again, loudly
    assert "no whole record batch" in caplog.text


async def test_a_round_failing_in_a_brokers_loop_is_logged_and_the_loop_goes_on(
    kafka: Kafka, caplog: pytest.LogCaptureFixture
) -> None:
    consumer = Running(kafka, fail_first=True)

    await asyncio.wait_for(intake.Intake(TOPIC, Metrics())._serve(kafka, consumer, None, 1), 5)

    assert consumer.looks == 2  # the failed round, then one that found nothing to fetch
    assert "fetching the input topic failed" in caplog.text


async def test_a_quiet_broker_does_not_hold_back_another(kafka: Kafka) -> None:
    kafka._subscription.seek(P0, 0)
    kafka._subscription.seek(P1, 0)
    kafka._client.cluster.leaders[P1] = 2
    kafka._client.quiet = {2}  # holds its fetch: nothing new there
    data = [(TOPIC, [answer(0, NO_ERROR, batch(0, 2))])]
    kafka._client.answer = type("Response", (), {"topics": data})
    consumer = Running(kafka, active={P0, P1})
    taken: list[tuple[TopicPartition, int]] = []

    async def take(_: Any, tp: TopicPartition, message: Any) -> None:
        taken.append((tp, message.offset))
        if len(taken) == 2:
            consumer.stop()

    await asyncio.wait_for(intake.Intake(TOPIC, Metrics()).run(consumer, take), 5)

    assert taken == [(P0, 0), (P0, 1)]
    assert state(kafka, P1).position == 0


async def test_a_partition_being_handed_over_is_left_to_its_loop(kafka: Kafka) -> None:
    kafka._subscription.seek(P0, 0)
    kafka._subscription.seek(P1, 0)
    fetching = intake.Intake(TOPIC, Metrics())
    fetching.taking.add(P0)  # a loop still hands over P0's records (its leader moved since)

    fetches = fetching._plan(kafka, FaustConsumer({P0, P1}), 1)

    assert fetches == {1: request(kafka, {P1: 0})}


async def test_a_failed_intake_is_logged_as_critical(caplog: pytest.LogCaptureFixture) -> None:
    from cadenza_scheduler import app

    async def fail() -> None:
        raise RuntimeError("defect")

    failed = asyncio.ensure_future(fail())
    await asyncio.wait([failed])
    cancelled = asyncio.ensure_future(asyncio.sleep(1))
    cancelled.cancel()
    await asyncio.wait([cancelled])

    app._intake_ended(failed)
    app._intake_ended(cancelled)  # a stop: nothing to say

    assert [r.levelname for r in caplog.records] == ["CRITICAL"]
    assert "fetch loop failed" in caplog.text
