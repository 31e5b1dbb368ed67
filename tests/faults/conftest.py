"""The fault suite reports how many duplicate calls the stub saw per fault."""

from __future__ import annotations

from typing import Any

import pytest

DUPLICATES: list[tuple[str, int, int]] = []


@pytest.fixture
def report_duplicates() -> Any:
    """Record (fault, calls, duplicate calls) for the terminal summary."""

    def add(fault: str, calls: int, duplicates: int) -> None:
        DUPLICATES.append((fault, calls, duplicates))

    return add


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not DUPLICATES:
        return
    terminalreporter.section("fault suite: duplicate step calls (at-least-once delivery)")
    for fault, calls, duplicates in DUPLICATES:
        terminalreporter.write_line(f"{fault:>14}: {calls} calls, {duplicates} duplicates")
