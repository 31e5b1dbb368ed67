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


def test_configure_sets_the_thresholds_and_times_each_pass(restored_gc: None) -> None:
    metrics = Metrics()

    heap.configure((12_345, 7, 3), metrics)
    gc.collect(1)

    assert gc.get_threshold() == (12_345, 7, 3)
    passes = metrics.registry.get_sample_value(
        "cadenza_scheduler_gc_pause_seconds_count", {"generation": "1"}
    )
    assert passes == 1


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
