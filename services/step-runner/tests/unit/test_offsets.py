"""Commits never skip an unfinished record, whatever order records finish in."""

from __future__ import annotations

import random

from cadenza_step_runner.offsets import PartitionOffsets


def test_nothing_committable_until_the_first_record_finishes() -> None:
    offsets = PartitionOffsets()
    for o in (10, 11, 12):
        offsets.started(o)

    offsets.finished(12)
    offsets.finished(11)

    assert offsets.committable() is None


def test_commit_advances_over_the_finished_prefix_only() -> None:
    offsets = PartitionOffsets()
    for o in (10, 11, 12, 13):
        offsets.started(o)

    offsets.finished(10)
    offsets.finished(12)
    first = offsets.committable()
    offsets.finished(11)

    assert first == 11
    assert offsets.committable() == 13
    assert offsets.in_flight == 1


def test_random_finish_orders_never_commit_past_an_unfinished_record() -> None:
    rng = random.Random(7)
    for _ in range(200):
        offsets = PartitionOffsets()
        order = list(range(50))
        for o in order:
            offsets.started(o)
        rng.shuffle(order)
        done: set[int] = set()
        for o in order:
            offsets.finished(o)
            done.add(o)
            committable = offsets.committable()
            if committable is not None:
                assert all(x in done for x in range(committable))
        assert offsets.committable() == 50
