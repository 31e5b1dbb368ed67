"""Runs Cadenza's services as child processes with prefixed logs; Ctrl-C stops them all."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass

from cadenza_devstack.stack import StackInfo

SERVICES: tuple[str, ...] = ("trigger-api", "scheduler", "step-runner", "approvals", "audit-sink")
COLORS = ("36", "33", "35", "32", "34", "31")


@dataclass
class Child:
    """One running service."""

    name: str
    process: asyncio.subprocess.Process


def module_of(service: str) -> str:
    return "cadenza_" + service.replace("-", "_")


async def start(name: str, env: dict[str, str]) -> Child:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module_of(name),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    return Child(name, process)


async def pump(child: Child, color: str) -> None:
    """Copy a child's output to ours, each line prefixed with the service's name."""
    assert child.process.stdout is not None
    prefix = (
        f"\033[{color}m{child.name:>12} |\033[0m "
        if sys.stdout.isatty()
        else f"{child.name:>12} | "
    )
    async for line in child.process.stdout:
        sys.stdout.write(prefix + line.decode(errors="replace"))
        sys.stdout.flush()
    code = await child.process.wait()
    sys.stdout.write(f"{prefix}exited with code {code}\n")


async def stop(children: list[Child], timeout: float = 15.0) -> None:
    """SIGTERM every child, then SIGKILL what is still running after `timeout`."""
    for child in children:
        if child.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
    for child in children:
        try:
            await asyncio.wait_for(child.process.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
            await child.process.wait()


async def supervise(info: StackInfo, services: tuple[str, ...] = SERVICES) -> None:
    """Start the services against `info` and keep them until SIGINT/SIGTERM."""
    env = {**os.environ, **info.env(), "PYTHONUNBUFFERED": "1"}
    children = [await start(name, env) for name in services]
    pumps = [asyncio.create_task(pump(c, COLORS[i % len(COLORS)])) for i, c in enumerate(children)]
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    print("Cadenza is running; press Ctrl-C to stop.", flush=True)
    await stopping.wait()
    print("\nstopping services ...", flush=True)
    await stop(children)
    await asyncio.gather(*pumps, return_exceptions=True)
