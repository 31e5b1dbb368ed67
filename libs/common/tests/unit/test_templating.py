"""Templating: references keep JSON types, interpolation, runner refs, no injection."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cadenza_common.durations import InvalidDuration, parse_duration
from cadenza_common.templating import (
    TemplateSyntaxError,
    has_templates,
    parse_template,
    render,
    resolve_runner_refs,
)

CONTEXT: dict[str, Any] = {
    "trigger": {"name": "Siti", "age": 31, "tags": ["a", "b"], "nested": {"k": [1, {"x": 2}]}},
    "step": {"capture": {"output": {"verdict": "passed", "score": 0.9}, "status": "succeeded"}},
    "execution": {"id": "e-1"},
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("${trigger.age}", 31),
        ("${trigger.tags}", ["a", "b"]),
        ("${trigger.nested.k[1].x}", 2),
        ('${trigger["name"]}', "Siti"),
        ("${step.capture.output.score}", 0.9),
        ("${step.capture.status}", "succeeded"),
        ("${execution.id}", "e-1"),
        ("${trigger.missing}", None),
        ("Hello ${trigger.name}, ${trigger.age}", "Hello Siti, 31"),
        ("tags=${trigger.tags}", 'tags=["a","b"]'),
        ("none=${trigger.missing}.", "none=."),
        ("literal $${trigger.name}", "literal ${trigger.name}"),
        ("no refs", "no refs"),
    ],
)
def test_renders_references(template: str, expected: Any) -> None:
    assert render(template, CONTEXT) == expected


def test_renders_nested_structures() -> None:
    value = {"a": ["${trigger.age}", {"b": "x-${trigger.name}"}], "n": 5}

    assert render(value, CONTEXT) == {"a": [31, {"b": "x-Siti"}], "n": 5}


def test_env_and_secret_references_are_left_for_the_runner() -> None:
    value = {"auth": "Bearer ${secrets.TOKEN}", "host": "${env.HOST}"}

    assert render(value, CONTEXT) == value


@pytest.mark.parametrize(
    "text", ["${", "${trigger.a", "${}", "${foo.x}", "${trigger..a}", "${trigger.a[x]}"]
)
def test_malformed_templates_raise(text: str) -> None:
    with pytest.raises(TemplateSyntaxError):
        parse_template(text)


def test_payload_values_are_never_parsed_as_templates() -> None:
    context = {"trigger": {"evil": "${secrets.DB_PASSWORD} ${trigger.other}", "other": "x"}}

    rendered = render(
        {"h": "v=${trigger.evil}", "w": "${trigger.evil}"}, context, escape_for_runner=True
    )
    final = resolve_runner_refs(rendered, env=lambda _: None, secrets=lambda _: "leaked")

    assert final == {
        "h": "v=${secrets.DB_PASSWORD} ${trigger.other}",
        "w": "${secrets.DB_PASSWORD} ${trigger.other}",
    }


def test_runner_resolves_spec_secrets_and_env() -> None:
    rendered = render(
        {"auth": "Bearer ${secrets.TOKEN}", "u": "${env.HOST}/${trigger.name}"},
        CONTEXT,
        escape_for_runner=True,
    )

    final = resolve_runner_refs(rendered, env={"HOST": "h"}.get, secrets={"TOKEN": "t"}.get)

    assert final == {"auth": "Bearer t", "u": "h/Siti"}


@settings(max_examples=200, deadline=None)
@given(data=st.text(max_size=40))
def test_any_string_value_survives_the_round_trip_unchanged(data: str) -> None:
    context = {"trigger": {"v": data}}

    rendered = render(["${trigger.v}", "<${trigger.v}>"], context, escape_for_runner=True)
    final = resolve_runner_refs(rendered, env=lambda _: "E", secrets=lambda _: "S")

    assert final == [data, f"<{data}>"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("2d", timedelta(days=2)),
        ("250ms", timedelta(milliseconds=250)),
        ("PT1M30S", timedelta(seconds=90)),
        ("P1D", timedelta(days=1)),
        ("P1DT2H", timedelta(days=1, hours=2)),
        (10, timedelta(seconds=10)),
        (1.5, timedelta(seconds=1.5)),
    ],
)
def test_parses_durations(text: str | int | float, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "soon", "5x", "P", "PT", "-5s", -1, "400d", True, "1m1h"])
def test_refuses_invalid_durations(text: Any) -> None:
    with pytest.raises(InvalidDuration):
        parse_duration(text)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet="ab${}.$ "),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)


@given(_JSON, st.booleans())
@settings(max_examples=300)
def test_a_value_without_templates_renders_to_itself(value: Any, escape: bool) -> None:
    try:
        rendered = render(value, CONTEXT, escape_for_runner=escape)
    except TemplateSyntaxError:
        assert has_templates(value)
        return
    if not has_templates(value):
        assert rendered == value
