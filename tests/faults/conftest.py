"""The fault suite reports how many duplicate calls the stub saw per fault."""

from __future__ import annotations

from typing import Any

import pytest

DUPLICATES: list[tuple[str, int, int, dict[str, float]]] = []


@pytest.fixture
def report_duplicates() -> Any:
    """Record (fault, calls, duplicate calls, seconds per phase) for the terminal summary."""

    def add(fault: str, calls: int, duplicates: int, phases: dict[str, float]) -> None:
        DUPLICATES.append((fault, calls, duplicates, phases))

    return add


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not DUPLICATES:
        return
    terminalreporter.section("fault suite: duplicate step calls (at-least-once delivery)")
    for fault, calls, duplicates, phases in DUPLICATES:
        seconds = ", ".join(f"{k} {v} s" for k, v in phases.items())
        terminalreporter.write_line(
            f"{fault:>14}: {calls} calls, {duplicates} duplicates ({seconds})")
