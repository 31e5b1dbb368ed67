"""`make run`: the five services and the demo service as processes, the demo setup, one
onboarding execution per branch with timelines, then serve until Ctrl-C (or stop: `--once`)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from cadenza_devstack.demo_branches import BRANCHES, Keys, Outcome, run_all, timeline
from cadenza_devstack.demo_setup import (
    DemoState,
    SetupFailed,
    ensure_connections,
    ensure_keys,
    ensure_subscription,
    ensure_workflow,
    onboarding_spec,
)
from cadenza_devstack.stack import StackInfo
from cadenza_devstack.supervisor import (
    Child,
    ServiceFailed,
    ServiceSpec,
    Topology,
    first_exit,
    running,
    service_specs,
    wait_ready,
)

T = TypeVar("T")
KYC_TOKEN = "demo-kyc-token"  # a demo secret: the runner sends it, the demo service checks it


class Stopped(Exception):
    """Ctrl-C, SIGTERM, or a service exited: the run ends early."""


@dataclass
class RunOptions:
    """How `run` behaves: stop after the scenario (`once`), how long to wait for things."""

    once: bool = False
    ready_timeout_s: float = 180.0
    branch_timeout_s: float = 120.0
    extra_env: dict[str, str] = field(default_factory=dict)


def demo_specs(state: DemoState, state_dir: Path, extra_env: dict[str, str]) -> list[ServiceSpec]:
    """The demo service (random 5-40 ms latency) and the five services wired to it."""
    demo_url = f"http://127.0.0.1:{state.demo_port}"
    demo = ServiceSpec("demo", "cadenza_demo",
                       ("--port", str(state.demo_port), "--latency-ms", "5-40"),
                       env={"CADENZA_DEMO_KYC_TOKEN": KYC_TOKEN},
                       ready_url=f"{demo_url}/healthz")
    topology = Topology(env=extra_env, runner_env={
        "CADENZA_SECRETS_KYC_TOKEN": KYC_TOKEN,
        "CADENZA_ENV_CUSTOMER_EVENTS_URL": f"{demo_url}/events/customer-events",
        # webhook_emit posts to an absolute URL; the demo service listens on loopback
        "CADENZA_ALLOW_PRIVATE_NETWORK": "true",
    })
    return [demo, *service_specs(topology, state.api_port, state_dir)]


async def _guarded(work: Coroutine[Any, Any, T], guard: asyncio.Task[str]) -> T:
    """Run `work` unless `guard` (a reason to stop) finishes first.

    Raises:
        Stopped: with the guard's reason.
    """
    task = asyncio.ensure_future(work)
    await asyncio.wait({task, guard}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise Stopped(guard.result())


async def _stop_reason(stopping: asyncio.Event, children: list[Child]) -> str:
    waiter = asyncio.create_task(stopping.wait())
    exited = asyncio.create_task(first_exit(children))
    done, _ = await asyncio.wait({waiter, exited}, return_when=asyncio.FIRST_COMPLETED)
    for task in (waiter, exited):
        task.cancel()
    if exited in done and not stopping.is_set():
        child = exited.result()
        return f"{child.name} exited with code {child.process.returncode}"
    return "stopped"


async def _setup(api: httpx.AsyncClient, state: DemoState, state_dir: Path,
                 env: dict[str, str]) -> str:
    demo_url = f"http://127.0.0.1:{state.demo_port}"
    if await ensure_keys(api, state, env):
        print("created the demo org, an admin key and an approver key", flush=True)
    else:
        print("reusing the demo org and keys from .cadenza/demo.json", flush=True)
    state.save(state_dir)
    await ensure_connections(api, state.admin_key, demo_url)
    await ensure_subscription(api, state.admin_key, demo_url)
    slug, version = await ensure_workflow(api, state.admin_key, onboarding_spec())
    print(f"workflow {slug} v{version} is published", flush=True)
    return slug


def _report(outcomes: list[Outcome]) -> bool:
    for outcome in outcomes:
        print(timeline(outcome), flush=True)
    good = sum(o.ok for o in outcomes)
    print(f"\n{good} of {len(BRANCHES)} branches ended as expected.", flush=True)
    return good == len(BRANCHES)


def banner(state: DemoState, slug: str) -> str:
    """Where to reach Cadenza and a request to paste."""
    api = f"http://127.0.0.1:{state.api_port}"
    body = ('{"input": {"customer_id": "c-1", "ktp_number": "3171234567890001", '
            '"full_name": "Siti Rahma"}}')
    return "\n".join([
        "",
        "Cadenza is running:",
        f"  API            {api}   (OpenAPI: {api}/docs)",
        f"  admin key      {state.admin_key}",
        f"  approver key   {state.approver_key}",
        f"  demo service   http://127.0.0.1:{state.demo_port}/docs",
        "  (kept in .cadenza/demo.json and reused by the next `make run`)",
        "",
        "Start an onboarding (a NIK ending in 7 waits for approval, a name such as",
        "'Dewi Sanksi' is an AML hit; GET /api/approvals with the approver key lists tasks):",
        f"  curl -sS -X POST {api}/api/workflows/{slug}/execute \\",
        f"    -H 'Authorization: Bearer {state.admin_key}' \\",
        "    -H 'Content-Type: application/json' \\",
        f"    -d '{body}'",
        f"  curl -sS {api}/api/executions/<executionId> -H 'Authorization: Bearer "
        f"{state.admin_key}'",
        "",
        "Press Ctrl-C to stop everything.",
    ])


async def run_demo(info: StackInfo, state_dir: Path, options: RunOptions) -> int:
    """The whole `make run`; returns the exit code (with `once`: 0 only if every branch
    ended as expected)."""
    state = DemoState.load(state_dir)
    state.choose_ports()
    state.save(state_dir)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    specs = demo_specs(state, state_dir, options.extra_env)
    env = {**info.env(), **options.extra_env}
    async with running(info, specs) as children:
        guard = asyncio.create_task(_stop_reason(stopping, children))
        try:
            return await _conduct(children, guard, state, state_dir, env, options)
        except Stopped as exc:
            print(f"\n{exc}; stopping services ...", flush=True)
            return 0 if str(exc) == "stopped" and not options.once else 1
        except (SetupFailed, ServiceFailed, httpx.HTTPError) as exc:
            print(f"\nerror: {exc}; stopping services ...", flush=True)
            return 1
        finally:
            guard.cancel()


async def _conduct(children: list[Child], guard: asyncio.Task[str], state: DemoState,
                   state_dir: Path, env: dict[str, str], options: RunOptions) -> int:
    await _guarded(wait_ready(children, options.ready_timeout_s), guard)
    print("\nall services are ready", flush=True)
    api_url = f"http://127.0.0.1:{state.api_port}"
    async with httpx.AsyncClient(base_url=api_url, timeout=10.0) as api:
        slug = await _guarded(_setup(api, state, state_dir, env), guard)
        print(f"running {len(BRANCHES)} onboarding executions, one per branch ...", flush=True)
        outcomes = await _guarded(
            run_all(api, Keys(state.admin_key, state.approver_key), slug,
                    options.branch_timeout_s), guard)
    all_ok = _report(outcomes)
    if options.once:
        return 0 if all_ok else 1
    print(banner(state, slug), flush=True)
    await _guarded(asyncio.Event().wait(), guard)
    return 0
