"""Expressions: CEL conditions and bounded JSONata transforms."""

from __future__ import annotations

import time

import pytest

from cadenza_common.expressions import (
    ExpressionError,
    compile_condition,
    compile_transform,
    evaluate_condition,
    evaluate_transform,
    step_references,
)

VARS = {
    "trigger": {"amount": 250, "country": "ID"},
    "step": {"screen": {"output": {"result": "clear", "hits": [1, 2, 3]}, "status": "succeeded"}},
}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('step.screen.output.result == "clear"', True),
        ("trigger.amount > 100 && trigger.country == 'ID'", True),
        ("size(step.screen.output.hits) >= 5", False),
        ("'result' in step.screen.output", True),
    ],
)
def test_conditions_evaluate_to_booleans(source: str, expected: bool) -> None:
    assert evaluate_condition(source, VARS) is expected


def test_condition_that_is_not_boolean_fails() -> None:
    with pytest.raises(ExpressionError, match="boolean"):
        evaluate_condition("trigger.amount + 1", VARS)


def test_condition_reading_a_missing_field_fails_cleanly() -> None:
    with pytest.raises(ExpressionError):
        evaluate_condition("trigger.nope == 1", VARS)


@pytest.mark.parametrize("source", ["a >", "(((", "x ? y"])
def test_conditions_that_do_not_parse_fail_to_compile(source: str) -> None:
    with pytest.raises(ExpressionError):
        compile_condition(source)


def test_transform_shapes_data() -> None:
    source = '{"total": $sum(step.screen.output.hits), "who": trigger.country}'

    assert evaluate_transform(source, VARS) == {"total": 6, "who": "ID"}


def test_runaway_transform_is_stopped_by_its_time_or_depth_bound() -> None:
    started = time.monotonic()

    with pytest.raises(ExpressionError):
        evaluate_transform("($f := function($x){ $f($x) }; $f(1))", {})

    assert time.monotonic() - started < 5


def test_transform_with_a_huge_output_is_refused() -> None:
    with pytest.raises(ExpressionError):
        evaluate_transform("[1..900000]", {})


def test_transform_input_size_is_bounded() -> None:
    with pytest.raises(ExpressionError, match="input"):
        evaluate_transform("x", {"x": "a" * 2_000_000})


@pytest.mark.parametrize("source", ["$now()", "$millis()", "$random()"])
def test_clock_and_random_are_refused_for_replay(source: str) -> None:
    with pytest.raises(ExpressionError, match="not allowed"):
        compile_transform(source)


def test_step_references_are_found_in_either_language() -> None:
    assert step_references('step.a.output.x == 1 && step["b"].status == "ok"') == {"a", "b"}
