"""Safe, bounded expressions: CEL for `decision` conditions, JSONata for `transform`.

Why these two (and not `eval`, a home-made language, jq or simpleeval):
- CEL (`common-expression-language`, Rust core, Google's Common Expression Language)
  is non-Turing-complete by design (no loops, no recursion, no I/O), type-checked at
  compile time, widely known from Kubernetes/Envoy/Firebase rules, and evaluates a
  small condition in microseconds: a condition cannot hang the scheduler.
- JSONata (`jsonata-python`) does real data shaping (mapping, filtering, aggregation,
  object construction), which a condition language cannot; it can recurse, so every
  evaluation runs in a `Timebox` bounding wall time and call depth, and input and
  output sizes are bounded by their JSON length. jq in-process cannot be bounded
  (`def f: f; f` never returns); jmespath has no arithmetic; simpleeval is a
  Python-AST whitelist, not a language designed to be safe.

Both see the same variables: `trigger`, `step` (`step.<id>.output`, `.status`,
`.error`), `execution` (`execution.id`), and in `map` items `item` and `index`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import cel
import jsonata

MAX_EXPRESSION_LENGTH = 4096
MAX_INPUT_BYTES = 1_000_000
MAX_OUTPUT_BYTES = 1_000_000
TRANSFORM_TIMEOUT_MS = 250
TRANSFORM_MAX_DEPTH = 200

_STEP_REF = re.compile(r"\bstep\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)")
_NONDETERMINISTIC = re.compile(r"\$(?:now|millis|random)\s*\(")
_STEP_INDEX_REF = re.compile(r"\bstep\s*\[\s*[\"'`]([A-Za-z_][A-Za-z0-9_]*)[\"'`]\s*\]")


class ExpressionError(ValueError):
    """An expression that does not compile or fails to evaluate within its bounds."""


def step_references(source: str) -> set[str]:
    """Node ids an expression reads through `step.<id>` (or `step["<id>"]`)."""
    return set(_STEP_REF.findall(source)) | set(_STEP_INDEX_REF.findall(source))


@lru_cache(maxsize=2048)
def compile_condition(source: str) -> Any:
    """Compile a CEL condition (cached by source).

    Raises:
        ExpressionError: when it is too long or does not parse.
    """
    _check_length(source)
    try:
        return cel.compile(source)
    except Exception as exc:  # the binding raises ValueError/RuntimeError on parse errors
        raise ExpressionError(f"CEL: {_first_line(exc)}") from None


def evaluate_condition(source: str, variables: Mapping[str, Any]) -> bool:
    """Evaluate a CEL condition to a boolean.

    Raises:
        ExpressionError: when it does not compile, fails (e.g. a missing field), or is not
            a boolean.
    """
    program = compile_condition(source)
    _check_size(variables, MAX_INPUT_BYTES, "input")
    try:
        result = program.execute(dict(variables))
    except Exception as exc:  # missing keys, type mismatches, overflow
        raise ExpressionError(f"CEL evaluation failed: {_first_line(exc)}") from None
    if not isinstance(result, bool):
        raise ExpressionError(f"condition must be a boolean, got {type(result).__name__}")
    return result


@lru_cache(maxsize=1024)
def _compile_transform(source: str) -> Any:
    _check_length(source)
    if found := _NONDETERMINISTIC.search(source):
        raise ExpressionError(f"JSONata: {found.group(0)}) is not allowed (replay must be exact)")
    try:
        return jsonata.Jsonata(source)
    except Exception as exc:  # JException on syntax errors
        raise ExpressionError(f"JSONata: {_first_line(exc)}") from None


def compile_transform(source: str) -> None:
    """Check that a JSONata transform compiles.

    Raises:
        ExpressionError: when it is too long, does not parse, or calls a clock or random.
    """
    _compile_transform(source)


def evaluate_transform(source: str, variables: Mapping[str, Any]) -> Any:
    """Evaluate a JSONata transform with bounded time, depth, input and output size.

    Raises:
        ExpressionError: on a compile error, a runtime error, or a bound exceeded.
    """
    expr = _compile_transform(source)
    _check_size(variables, MAX_INPUT_BYTES, "input")
    try:
        # a fresh Timebox per evaluation: its clock starts when it is created
        expr.environment.set_runtime_bounds(TRANSFORM_TIMEOUT_MS, TRANSFORM_MAX_DEPTH)
        result = expr.evaluate(dict(variables))
    except Exception as exc:  # JException, RecursionError
        raise ExpressionError(f"JSONata evaluation failed: {_first_line(exc)}") from None
    _check_size(result, MAX_OUTPUT_BYTES, "output")
    return result


def _check_length(source: str) -> None:
    if len(source) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(f"expression longer than {MAX_EXPRESSION_LENGTH} characters")


def _check_size(value: Any, limit: int, what: str) -> None:
    try:
        size = len(json.dumps(value, default=str))
    except (TypeError, ValueError):
        raise ExpressionError(f"{what} is not JSON") from None
    if size > limit:
        raise ExpressionError(f"{what} is {size} bytes, more than {limit}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
