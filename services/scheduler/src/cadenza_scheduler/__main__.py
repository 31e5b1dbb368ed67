"""Entry point of the scheduler service: `python -m cadenza_scheduler` runs a Faust worker."""

from __future__ import annotations

import asyncio
import logging

import faust
import mode.loop

from cadenza_scheduler import heap
from cadenza_scheduler.app import create_app
from cadenza_scheduler.settings import Settings


def use_event_loop(name: str) -> None:
    """Make `name` ("uvloop" or "asyncio") the loop every later `asyncio` call creates."""
    if name == "uvloop":
        mode.loop.use("uvloop")  # what Faust's `-L uvloop` does
    else:
        asyncio.set_event_loop_policy(None)


def run() -> None:
    """Read the settings from the environment and run the worker until it is stopped."""
    settings = Settings()
    use_event_loop(settings.event_loop)
    scheduler = create_app(settings)
    heap.configure(scheduler.collector, scheduler.shell.metrics)
    worker = faust.Worker(scheduler.app, loglevel=settings.log_level)
    # mode leaves the root logger at DEBUG (its handler filters), so every library debug
    # call built a LogRecord: ~5 % of the scheduler's CPU under load. Set the level where
    # the calls are made.
    level = logging.getLevelName(settings.log_level.upper())
    for name in ("aiokafka", "faust", "mode", "cadenza_scheduler"):
        logging.getLogger(name).setLevel(level)
    worker.execute_from_commandline()


if __name__ == "__main__":
    run()
