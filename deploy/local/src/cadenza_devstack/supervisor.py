"""Runs Cadenza's services (and the demo) as child processes: prefixed logs or log files,
readiness checks, and a clean stop (SIGTERM, then SIGKILL after a grace period)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from cadenza_devstack.stack import StackInfo
from cadenza_devstack.state import free_port

SERVICES: tuple[str, ...] = ("trigger-api", "scheduler", "step-runner", "approvals", "audit-sink")
COLORS = ("36", "33", "35", "32", "34", "31", "96", "93")


class ServiceFailed(RuntimeError):
    """A service exited, or did not become ready in time."""


@dataclass(frozen=True)
class ServiceSpec:
    """How to start one process: `python -m <module> <args>` with extra environment."""

    name: str
    module: str
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    ready_url: str | None = None


@dataclass
class Child:
    """One running service."""

    name: str
    process: asyncio.subprocess.Process
    spec: ServiceSpec | None = None
    log: IO[bytes] | None = None


def module_of(service: str) -> str:
    return "cadenza_" + service.replace("-", "_")


@dataclass(frozen=True)
class Topology:
    """How many scheduler and step-runner processes to run, and service-wide extra env."""

    schedulers: int = 1
    runners: int = 1
    runner_env: dict[str, str] = field(default_factory=dict)
    api_env: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


def service_port(taken: set[int] | None = None) -> int:
    """A free port below the kernel's ephemeral range (32768+ on Linux), so an outgoing
    connection cannot take it between now and the service's bind; never one in `taken`."""
    taken = taken if taken is not None else set()
    for _ in range(200):
        port = random.randint(20_000, 32_000)
        if port in taken:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
        taken.add(port)
        return port
    return free_port()


def _numbered(name: str, index: int, count: int) -> str:
    return name if count == 1 else f"{name}-{index + 1}"


def service_specs(topology: Topology, api_port: int, state_dir: Path) -> list[ServiceSpec]:
    """The five services on free loopback ports (the API on `api_port`)."""
    api = f"http://127.0.0.1:{api_port}"
    taken = {api_port}
    specs = [ServiceSpec("trigger-api", "cadenza_trigger_api", env={
        "CADENZA_API_PORT": str(api_port), "CADENZA_API_PUBLIC_BASE_URL": api,
        **topology.api_env}, ready_url=f"{api}/readyz")]
    for i in range(topology.schedulers):
        port = service_port(taken)
        specs.append(ServiceSpec(_numbered("scheduler", i, topology.schedulers),
                                 "cadenza_scheduler", env={
            "CADENZA_SCHEDULER_WEB_PORT": str(port),
            "CADENZA_SCHEDULER_DATA_DIR": str(state_dir / f"scheduler-{i + 1}"),
            "CADENZA_SCHEDULER_LOG_LEVEL": "warning",
        }, ready_url=f"http://127.0.0.1:{port}/health/ready"))
    for i in range(topology.runners):
        port = service_port(taken)
        specs.append(ServiceSpec(_numbered("step-runner", i, topology.runners),
                                 "cadenza_step_runner",
                                 env={"CADENZA_METRICS_PORT": str(port), **topology.runner_env},
                                 ready_url=f"http://127.0.0.1:{port}/metrics"))
    approvals, sink = service_port(taken), service_port(taken)
    specs.append(ServiceSpec("approvals", "cadenza_approvals",
                             env={"CADENZA_APPROVALS_PORT": str(approvals)},
                             ready_url=f"http://127.0.0.1:{approvals}/readyz"))
    specs.append(ServiceSpec("audit-sink", "cadenza_audit_sink",
                             env={"CADENZA_AUDIT_SINK_METRICS_PORT": str(sink)},
                             ready_url=f"http://127.0.0.1:{sink}/metrics"))
    return [ServiceSpec(s.name, s.module, s.args, {**topology.env, **s.env}, s.ready_url)
            for s in specs]


def _open_log(log_dir: Path, name: str) -> IO[bytes]:
    log_dir.mkdir(parents=True, exist_ok=True)
    return (log_dir / f"{name}.log").open("ab")


async def start(name: str, env: dict[str, str]) -> Child:
    """Start one of the five services by name with exactly `env` (output piped)."""
    return await start_spec(ServiceSpec(name, module_of(name)), env, None)


async def start_spec(spec: ServiceSpec, base_env: dict[str, str], log_dir: Path | None
                     ) -> Child:
    """Start one service; its output is piped (to be prefixed) or written to `log_dir`."""
    log = _open_log(log_dir, spec.name) if log_dir is not None else None
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", spec.module, *spec.args,
        env={**base_env, **spec.env},
        stdout=log or asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    return Child(spec.name, process, spec, log)


async def pump(child: Child, color: str) -> None:
    """Copy a child's output to ours, each line prefixed with the service's name."""
    prefix = (
        f"\033[{color}m{child.name:>13} |\033[0m "
        if sys.stdout.isatty()
        else f"{child.name:>13} | "
    )
    if child.process.stdout is not None:
        async for line in child.process.stdout:
            sys.stdout.write(prefix + line.decode(errors="replace"))
            sys.stdout.flush()
    code = await child.process.wait()
    how = "stopped" if code in (0, -signal.SIGTERM) else "exited"
    sys.stdout.write(f"{prefix}{how} (exit code {code})\n")


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
        if child.log is not None:
            child.log.close()


async def wait_ready(children: list[Child], timeout: float = 120.0) -> None:
    """Poll each child's readiness URL until it answers 200.

    Raises:
        ServiceFailed: when a child exits or is not ready within `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2.0) as http:
        for child in children:
            url = child.spec.ready_url if child.spec else None
            while url is not None:
                if child.process.returncode is not None:
                    raise ServiceFailed(f"{child.name} exited with {child.process.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(url)).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise ServiceFailed(f"{child.name} was not ready after {timeout:.0f} s")
                await asyncio.sleep(0.25)


@contextlib.asynccontextmanager
async def running(
    info: StackInfo, specs: Sequence[ServiceSpec], log_dir: Path | None = None
) -> AsyncIterator[list[Child]]:
    """Start `specs` against the stack `info`; stop them all when the block ends."""
    env = {**os.environ, **info.env(), "PYTHONUNBUFFERED": "1"}
    children: list[Child] = []
    pumps: list[asyncio.Task[None]] = []
    try:
        for i, spec in enumerate(specs):
            child = await start_spec(spec, env, log_dir)
            children.append(child)
            if log_dir is None:
                pumps.append(asyncio.create_task(pump(child, COLORS[i % len(COLORS)])))
        yield children
    finally:
        await stop(children)
        await asyncio.gather(*pumps, return_exceptions=True)


async def first_exit(children: list[Child]) -> Child:
    """Wait until any child exits; return it."""
    waits = {asyncio.create_task(c.process.wait()): c for c in children}
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
    return waits[next(iter(done))]


def isolated_env(topic_prefix: str) -> dict[str, str]:
    """Environment giving every service topics and consumer groups under `topic_prefix`,
    so a run on a shared broker sees nothing of any other run."""
    return {
        "CADENZA_KAFKA_TOPIC_PREFIX": topic_prefix,
        "CADENZA_SCHEDULER_APP_ID": f"{topic_prefix}scheduler",
        "CADENZA_GROUP_ID": f"{topic_prefix}step-runner",
        "CADENZA_WEBHOOK_GROUP_ID": f"{topic_prefix}webhook-delivery",
        "CADENZA_APPROVALS_GROUP_ID": f"{topic_prefix}approvals",
        "CADENZA_AUDIT_SINK_GROUP_ID": f"{topic_prefix}audit-sink",
    }


async def supervise(info: StackInfo, services: tuple[str, ...] = SERVICES) -> None:
    """Run the named services against `info` with prefixed logs until SIGINT/SIGTERM."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    specs = [ServiceSpec(name, module_of(name)) for name in services]
    async with running(info, specs):
        print("Cadenza is running; press Ctrl-C to stop.", flush=True)
        await stopping.wait()
        print("\nstopping services ...", flush=True)
