"""The scheduler's garbage-collector settings: thresholds, pause metric, freeze."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from cadenza_scheduler import heap
from cadenza_scheduler.metrics import Metrics


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds, callbacks = gc.get_threshold(), list(gc.callbacks)
    yield
    gc.set_threshold(*thresholds)
    gc.callbacks[:] = callbacks
    gc.unfreeze()


def test_configure_keeps_the_collectors_trigger_as_a_backstop_and_times_each_pass(
    restored_gc: None,
) -> None:
    metrics = Metrics()
    collector = heap.Collector((12_345, 7, 3), backstop=10)

    heap.configure(collector, metrics)
    gc.collect(1)

    assert gc.get_threshold() == (123_450, 7, 3)
    assert collector.active
    passes = metrics.registry.get_sample_value(
        "cadenza_scheduler_gc_pause_seconds_count", {"generation": "1", "trigger": "other"}
    )
    assert passes == 1


def _allocate(n: int) -> list[list[None]]:
    return [[] for _ in range(n)]  # n objects the collector tracks


def test_a_young_pass_runs_between_batches_once_the_threshold_is_crossed(
    restored_gc: None,
) -> None:
    metrics = Metrics()
    collector = heap.Collector((5_000, 1_000, 1_000))
    heap.configure(collector, metrics)
    gc.collect()

    kept = _allocate(2_000)
    assert collector.between_batches() is None  # below the threshold: no pass
    assert gc.get_count()[0] >= 2_000

    kept += _allocate(4_000)
    young_passes = gc.get_stats()[0]["collections"]
    assert collector.between_batches() == 0
    assert gc.get_stats()[0]["collections"] == young_passes + 1
    assert gc.get_count()[0] < 100  # counted afresh from this pass
    ours = metrics.registry.get_sample_value(
        "cadenza_scheduler_gc_pause_seconds_count",
        {"generation": "0", "trigger": "between_batches"},
    )
    assert ours == 1


def test_older_generations_are_collected_when_their_counts_are_due(restored_gc: None) -> None:
    collector = heap.Collector((100, 2, 2))
    heap.configure(collector, Metrics())
    gc.collect()
    collected = []
    kept = []
    for _ in range(14):
        kept += _allocate(150)
        collected.append(collector.between_batches())

    # as CPython's own trigger: a middle pass once more than 2 young ones ran since the
    # last, a full pass once more than 2 middle ones did
    assert collected == [0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 2, 0]
    assert len(kept) == 14 * 150


def test_cycles_made_during_batches_are_collected_between_them(restored_gc: None) -> None:
    class Node:
        other: object = None

    collector = heap.Collector((1_000, 1_000, 1_000))
    heap.configure(collector, Metrics())
    gc.collect()
    a, b = Node(), Node()
    a.other, b.other = b, a
    cycle = weakref.ref(a)
    del a, b
    _garbage = _allocate(2_000)  # the batch's other allocations, still alive
    del _garbage

    assert collector.between_batches() is None  # net allocations fell back under it
    kept = _allocate(2_000)
    assert collector.between_batches() == 0
    assert cycle() is None
    assert len(kept) == 2_000


def test_an_inactive_collector_leaves_the_collector_alone() -> None:
    collector = heap.Collector((1, 1, 1))
    kept = _allocate(100)
    passes = [generation["collections"] for generation in gc.get_stats()]

    assert collector.between_batches() is None
    assert [generation["collections"] for generation in gc.get_stats()] == passes
    assert len(kept) == 100


def test_settle_collects_cycles_then_freezes_what_is_alive(restored_gc: None) -> None:
    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle: only the collector frees it
    cycle = weakref.ref(a)
    del a, b
    kept = Node()

    heap.settle()

    assert cycle() is None
    assert gc.get_freeze_count() > 0
    assert all(o is not kept for o in gc.get_objects())  # frozen: no longer scanned
