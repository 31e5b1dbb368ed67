"""The entry point's event loop choice."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pydantic
import pytest
import uvloop

from cadenza_scheduler.__main__ import use_event_loop
from cadenza_scheduler.settings import Settings


@pytest.fixture
def restored_policy() -> Iterator[None]:
    policy = asyncio.get_event_loop_policy()
    yield
    asyncio.set_event_loop_policy(policy)


def _loop_type(name: str) -> type:
    use_event_loop(name)
    loop = asyncio.new_event_loop()
    try:
        return type(loop)
    finally:
        loop.close()


def test_uvloop_is_the_default_and_asyncio_can_be_chosen(
    restored_policy: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CADENZA_SCHEDULER_EVENT_LOOP", raising=False)
    assert Settings().event_loop == "uvloop"
    assert _loop_type("uvloop") is uvloop.Loop

    monkeypatch.setenv("CADENZA_SCHEDULER_EVENT_LOOP", "asyncio")
    chosen = Settings().event_loop
    assert chosen == "asyncio"
    assert not issubclass(_loop_type(chosen), uvloop.Loop)


def test_an_unknown_event_loop_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CADENZA_SCHEDULER_EVENT_LOOP", "tokio")
    with pytest.raises(pydantic.ValidationError, match="event_loop"):
        Settings()
