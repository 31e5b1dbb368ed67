"""The scheduler's table: which changelog writes go out when, and how they are keyed."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Sequence

import pytest

from cadenza_scheduler import app as app_module
from cadenza_scheduler.agents import Outgoing, partition_of
from cadenza_scheduler.app import DurableTable, _changelog_key, create_app
from cadenza_scheduler.settings import Settings
from cadenza_scheduler.specs import entry_key


def table() -> DurableTable:
    built = create_app(Settings(write_delay_s=1.0)).table
    assert isinstance(built, DurableTable)
    return built


def test_changelog_keys_are_the_bytes_faust_writes_and_recovers() -> None:
    executions = table()
    key = "0190f0f0-0000-7000-8000-0000000000aa"

    faust_key, _ = executions.changelog_topic.prepare_key(
        key, executions.key_serializer, headers=None
    )

    assert _changelog_key(key) == faust_key


def test_an_execution_goes_to_its_keys_partition_and_a_spec_entry_to_its_own() -> None:
    executions = table()
    key = "0190f0f0-0000-7000-8000-0000000000aa"

    assert executions.partition_for_key(key) == partition_of(key, executions.partitions)
    assert executions.partition_for_key(entry_key(7, "ab" * 16)) == 7


def test_a_write_nobody_waits_for_is_held_back_until_the_delay_is_over() -> None:
    executions = table()
    now = time.monotonic()
    executions.dirty = {"old": now - 1.5, "cleared": now - 0.2, "batch": now}

    assert executions._due(["batch"]) == ["batch", "old"]
    assert executions._due(()) == ["old"]
    assert executions._due(None) == ["old", "cleared", "batch"]


def test_a_key_waited_for_and_held_back_too_long_is_sent_once() -> None:
    # Listed twice, the second send failed to un-dirty it (KeyError) and the whole batch's
    # flush was retried after a 0.5 s back-off: stalls of half a second under load.
    executions = table()
    now = time.monotonic()
    executions.dirty = {"old": now - 1.5, "older": now - 1.2, "batch": now}

    assert executions._due(["old", "batch"]) == ["old", "batch", "older"]


def test_a_key_keeps_the_time_it_first_became_dirty() -> None:
    executions = table()
    executions.on_key_set("k", b"1")
    first = executions.dirty["k"]
    executions.on_key_set("other", b"1")

    executions.on_key_set("k", b"2")

    assert executions.dirty["k"] == first
    assert list(executions.dirty) == ["k", "other"]


async def test_the_consumer_fetches_with_the_configured_wait_not_fausts_fixed_one() -> None:
    from cadenza_common.settings import KafkaSettings

    scheduler = create_app(Settings(kafka=KafkaSettings(fetch_max_wait_ms=7)))
    thread = scheduler.app.consumer._new_consumer_thread()

    client = thread._create_worker_consumer(scheduler.app.transport)

    assert client._fetch_max_wait_ms == 7


async def test_the_consumer_runs_on_the_apps_loop_and_is_called_directly() -> None:
    scheduler = create_app(Settings())
    thread = scheduler.app.consumer._new_consumer_thread()
    callers: list[int] = []

    async def on_the_consumer() -> str:
        callers.append(threading.get_ident())
        return "done"

    async with asyncio.timeout(5):  # a thread's method queue would never answer here
        result = await thread.call_thread(on_the_consumer)

    assert result == "done"
    assert callers == [threading.get_ident()]
    assert thread.thread_loop is asyncio.get_running_loop()


async def test_fausts_monitor_sensor_is_neither_called_nor_started() -> None:
    scheduler = create_app(Settings())
    app = scheduler.app

    services = list(app.on_init_dependencies())

    assert app.monitor not in services
    assert list(app.sensors) == []
    app.sensors.on_table_set(scheduler.table, "k", b"v")  # what a table write calls
    assert app.monitor.tables == {}  # the Monitor kept no statistics


async def test_a_rebalance_without_sensors_logs_no_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = create_app(Settings()).app
    list(app.on_init_dependencies())

    with caplog.at_level(logging.WARNING):
        app.on_rebalance_start()
        app.on_rebalance_return()
        app.on_rebalance_end()

    assert not [r for r in caplog.records if "sensor state" in r.getMessage()]
    assert not app.rebalancing


async def test_a_write_while_its_key_is_being_sent_is_sent_by_the_next_persist(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The agent applies a batch while an earlier batch (or the timer task) persists: a key
    # written while the producer takes the older value must stay dirty, or the next
    # persist would wait for the older write and the new state's emits go out first.
    executions = table()
    sent: list[tuple[str, bytes | None]] = []

    async def send_records(app: object, records: Sequence[Outgoing]) -> list[Awaitable[None]]:
        sent.extend((r.key.decode(), r.value) for r in records if r.key is not None)
        await asyncio.sleep(0)
        write("k", b"new")  # what the agent does meanwhile
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return [done] * len(records)

    def write(key: str, value: bytes) -> None:
        executions.data[key] = value
        executions.on_key_set(key, value)

    monkeypatch.setattr(app_module, "send_records", send_records)
    write("k", b"old")

    await executions.persist(["k"])
    assert sent == [('"k"', b"old")]
    assert "k" in executions.dirty

    await executions.persist(["k"])
    assert sent[-1] == ('"k"', b"new")
