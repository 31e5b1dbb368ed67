"""Smoke: a two-step workflow runs through every service."""

from __future__ import annotations

import pytest
from system_harness import System

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def test_a_two_step_workflow_succeeds(system: System) -> None:
    spec = {
        "nodes": [
            {"id": "a", "type": "service_call", "connection": "stub", "path": "/smoke/a"},
            {"id": "b", "type": "service_call", "connection": "stub", "path": "/smoke/b",
             "depends_on": ["a"], "method": "POST", "body": {"from": "${step.a.output.path}"}},
        ]
    }
    system.api.workflow("smoke", spec)

    started = system.api.execute("smoke", {"x": 1})
    done = system.api.wait_finished(started["executionId"])

    assert done["status"] == "succeeded", done
    assert [s["status"] for s in done["steps"]] == ["succeeded", "succeeded"]
