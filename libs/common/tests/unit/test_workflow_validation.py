"""validate_workflow: one test per error code, every problem at once, and a fuzz test."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cadenza_common.workflow import (
    MAX_NODES,
    InvalidWorkflow,
    WorkflowLoadError,
    load_workflow_text,
    parse_workflow,
    validate_workflow,
)

ONBOARDING = Path(__file__).parents[4] / "examples" / "onboarding.yaml"


def call(node_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "type": "service_call", "connection": "svc", **extra}


def spec(*nodes: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"slug": "demo", "nodes": list(nodes), **extra}


def codes(doc: Any) -> set[tuple[str, str]]:
    return {(e.path, e.code) for e in validate_workflow(doc).errors}


def test_onboarding_example_is_valid() -> None:
    doc = load_workflow_text(ONBOARDING.read_text())

    result = validate_workflow(doc)

    assert result.ok, result.errors
    assert result.spec is not None
    assert result.spec.node("route_kyc").type == "decision"


def test_valid_spec_has_no_errors_and_a_spec() -> None:
    result = validate_workflow(spec(call("a"), call("b", depends_on=["a"])))

    assert result.ok
    assert result.errors == []
    assert result.spec is not None
    assert [n.id for n in result.spec.nodes] == ["a", "b"]


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        pytest.param(
            spec(call("a"), {"id": "b", "type": "teleport"}),
            ("nodes[1]", "unknown_node_type"),
            id="unknown_node_type",
        ),
        pytest.param(spec({"id": "a"}), ("nodes[0]", "missing_node_type"), id="missing_type"),
        pytest.param(spec(call("a"), call("a")), ("nodes[1].id", "duplicate_id"), id="dup"),
        pytest.param(
            spec(call("a", depends_on=["ghost"])),
            ("nodes[0].depends_on[0]", "unknown_reference"),
            id="unknown_reference",
        ),
        pytest.param(
            spec(
                call("a"),
                {
                    "id": "d",
                    "type": "decision",
                    "depends_on": ["a"],
                    "cases": [{"when": "true", "next": ["a", "nope"]}],
                },
            ),
            ("nodes[1].cases[0].next[1]", "unknown_reference"),
            id="unknown_reference_in_case",
        ),
        pytest.param(
            spec(
                call("a", depends_on=["c"]),
                call("b", depends_on=["a"]),
                call("c", depends_on=["b"]),
            ),
            ("nodes[0]", "cycle"),
            id="cycle",
        ),
        pytest.param(
            spec(
                call("a"),
                {
                    "id": "d",
                    "type": "decision",
                    "depends_on": ["a"],
                    "cases": [{"when": "true", "next": ["b"]}],
                },
                call("b", depends_on=["d"]),
                call("c", depends_on=["d"]),
            ),
            ("nodes[3]", "unreachable_node"),
            id="unreachable_node",
        ),
        pytest.param(
            spec(call("a", body={"x": "${trigger.a"})),
            ("nodes[0].body.x", "template_syntax"),
            id="template_unclosed",
        ),
        pytest.param(
            spec(call("a", path="/${nonsense.x}")),
            ("nodes[0].path", "template_syntax"),
            id="template_unknown_root",
        ),
        pytest.param(
            spec(
                call("a"),
                {
                    "id": "d",
                    "type": "decision",
                    "depends_on": ["a"],
                    "cases": [{"when": "step.a.output.x ==", "next": ["a"]}],
                },
            ),
            ("nodes[1].cases[0].when", "expression_syntax"),
            id="cel_syntax",
        ),
        pytest.param(
            spec({"id": "t", "type": "transform", "expression": "{ 'a': "}),
            ("nodes[0].expression", "expression_syntax"),
            id="jsonata_syntax",
        ),
        pytest.param(
            spec(call("a", body="${step.b.output}"), call("b")),
            ("nodes[0].body", "reference_not_upstream"),
            id="reference_not_upstream",
        ),
        pytest.param(
            spec(call("a", timeout="soon")),
            ("nodes[0].timeout", "invalid_duration"),
            id="invalid_duration",
        ),
        pytest.param(
            spec(call("a"), timeout="P1Y"), ("timeout", "invalid_duration"), id="iso_years"
        ),
        pytest.param(
            spec(call("a", timeout=8.64e13)),
            ("nodes[0].timeout", "invalid_duration"),
            id="duration_beyond_timedelta",
        ),
        pytest.param(
            spec(call("a"), timeout="99999999999d"),
            ("timeout", "invalid_duration"),
            id="days_beyond_timedelta",
        ),
        pytest.param(
            spec(*[call(f"n{i}") for i in range(MAX_NODES + 1)]),
            ("nodes", "limit_exceeded"),
            id="too_many_nodes",
        ),
        pytest.param(spec(call("a", body="x" * 1_100_000)), ("", "limit_exceeded"), id="too_big"),
        pytest.param(
            spec({"id": "t", "type": "transform", "expression": "1+" * 3000 + "1"}),
            ("nodes[0].expression", "limit_exceeded"),
            id="expression_too_long",
        ),
        pytest.param(
            spec({"id": "a", "type": "service_call"}),
            ("nodes[0]", "missing_target"),
            id="missing_target",
        ),
        pytest.param(
            spec({"id": "w", "type": "wait"}), ("nodes[0]", "missing_field"), id="wait_needs_one"
        ),
        pytest.param(
            spec(call("a"), call("b", depends_on=["a"], join="n_of_m", join_n=2)),
            ("nodes[1].join_n", "invalid_join"),
            id="invalid_join",
        ),
        pytest.param(
            spec(call("a", colour="red")), ("nodes[0].colour", "extra_forbidden"), id="extra"
        ),
        pytest.param({"nodes": [call("a")]}, ("slug", "missing"), id="missing_slug"),
        pytest.param(
            spec(call("a", body="${item.x}")),
            ("nodes[0].body", "template_syntax"),
            id="item_outside_map",
        ),
    ],
)
def test_reports_error_code_at_json_path(doc: dict[str, Any], expected: tuple[str, str]) -> None:
    found = codes(doc)

    assert expected in found, found


def test_reports_every_problem_at_once() -> None:
    doc = spec(
        {"id": "a", "type": "teleport"},
        call("b", depends_on=["ghost"], timeout="never"),
        call("b"),
        {"id": "t", "type": "transform", "expression": "(("},
    )

    found = {code for _, code in codes(doc)}

    assert {
        "unknown_node_type",
        "unknown_reference",
        "invalid_duration",
        "duplicate_id",
        "expression_syntax",
    } <= found
    assert validate_workflow(doc).spec is None


def test_cycle_message_names_the_cycle() -> None:
    doc = spec(call("a", depends_on=["b"]), call("b", depends_on=["a"]))

    [issue] = [e for e in validate_workflow(doc).errors if e.code == "cycle"]

    assert issue.message == "cycle: a -> b -> a"


def test_a_reference_to_an_unknown_but_invalid_node_is_not_reported_twice() -> None:
    doc = spec({"id": "a", "type": "service_call", "connection": 5}, call("b", depends_on=["a"]))

    found = codes(doc)

    assert ("nodes[0].connection", "string_type") in found
    assert all(code != "unknown_reference" for _, code in found)


def test_parse_workflow_raises_with_every_error() -> None:
    with pytest.raises(InvalidWorkflow) as info:
        parse_workflow(spec(call("a"), call("a")))

    assert [e.code for e in info.value.errors] == ["duplicate_id"]


BOMB = "a: &a [x, x]\nb: &b [*a, *a]\nc: &c [*b, *b]\nd: [*c, *c]\n"


@pytest.mark.parametrize("text", ["nodes: [", "{", "- a list", "42", "", BOMB, "x" * 3_000_000])
def test_load_refuses_malformed_or_non_object_text(text: str) -> None:
    with pytest.raises(WorkflowLoadError):
        load_workflow_text(text)


def test_load_reads_json_and_yaml_alike() -> None:
    doc = spec(call("a"))

    assert load_workflow_text(json.dumps(doc)) == load_workflow_text(
        "slug: demo\nnodes:\n  - {id: a, type: service_call, connection: svc}\n"
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
node_keys = st.sampled_from(
    [
        "id",
        "type",
        "depends_on",
        "cases",
        "default",
        "when",
        "next",
        "on_error",
        "join",
        "join_n",
        "timeout",
        "retry",
        "connection",
        "url",
        "body",
        "expression",
        "duration",
        "items",
        "node",
        "approvers",
        "workflow",
    ]
)
node_types = st.sampled_from(
    [
        "service_call",
        "decision",
        "transform",
        "wait",
        "webhook_emit",
        "human_approval",
        "map",
        "sub_workflow",
        "bogus",
    ]
)
fuzz_nodes = st.dictionaries(
    node_keys, json_values | node_types | st.just("${step.a.output}"), max_size=8
)


@settings(max_examples=300, deadline=None)
@given(
    doc=st.dictionaries(
        st.sampled_from(["slug", "nodes", "timeout", "output", "junk"]),
        json_values | st.lists(fuzz_nodes, max_size=6),
        max_size=5,
    )
)
def test_random_documents_never_crash_the_validator(doc: dict[str, Any]) -> None:
    result = validate_workflow(doc)

    assert result.ok == (result.spec is not None)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_mutations_of_a_valid_spec_never_crash_the_validator(data: st.DataObject) -> None:
    doc = load_workflow_text(ONBOARDING.read_text())
    mutated = copy.deepcopy(doc)
    index = data.draw(st.integers(0, len(mutated["nodes"]) - 1))
    key = data.draw(node_keys)
    mutated["nodes"][index][key] = data.draw(json_values | st.just("${step.zz.output"))

    result = validate_workflow(mutated)

    assert result.ok == (result.spec is not None)
