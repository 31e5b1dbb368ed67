"""All five services as separate processes on one session's topics and database.

`System` starts `python -m cadenza_<service>` for each service with its own ports,
consumer groups under the session's topic prefix and one log file per service
(`<workdir>/<service>.log`), waits for their health endpoints, and can SIGKILL and
restart any of them. `Api` is a small client of the public REST API with the org's
admin key.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from cadenza_common.settings import KafkaSettings

SERVICES: tuple[str, ...] = ("trigger-api", "scheduler", "step-runner", "approvals", "audit-sink")
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "timed_out"})
READY_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


@contextlib.contextmanager
def _usr1_ignored() -> Iterator[None]:
    """Children start with SIGUSR1 ignored (an inherited disposition).

    The scheduler (faust's `mode`) handles SIGUSR1 (a stack dump) only once it is up; a
    SIGUSR1 sent to scheduler processes on this shared machine during its start-up killed
    it (exit -10). Ignoring it until `mode` installs its handler closes that window.
    """
    previous = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR1, previous)


def module_of(service: str) -> str:
    return "cadenza_" + service.replace("-", "_")


@dataclass
class ServiceProcess:
    """One service as a child process with a log file of its own."""

    name: str
    env: dict[str, str]
    health_url: str
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    args: tuple[str, ...] = ()

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self) -> None:
        self.starts += 1
        with self.log.open("ab") as out, _usr1_ignored():
            out.write(f"===== {self.name} start {self.starts} =====\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module_of(self.name), *self.args],
                env=self.env, cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        if not self.alive():
            raise AssertionError(f"{self.name} exited:\n{self.tail()}")
        try:
            return httpx.get(self.health_url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = READY_S) -> None:
        wait_for(self.ready, timeout, f"{self.name} to be ready", every=0.2)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no commit, no flush."""
        if self.proc is not None and self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is not None and self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


KYC_TOKEN = "e2e-kyc-token"  # the runner sends it as ${secrets.KYC_TOKEN}; the demo checks it


def demo_process(workdir: Path, latency_ms: str = "0-50") -> tuple[ServiceProcess, str]:
    """The demo sibling service (`python -m cadenza_demo`) as a process, and its URL."""
    port = free_port()
    process = ServiceProcess("demo", {**os.environ, "PYTHONUNBUFFERED": "1"},
                             f"http://127.0.0.1:{port}/healthz", workdir,
                             args=("--port", str(port), "--latency-ms", latency_ms,
                                   "--kyc-token", KYC_TOKEN))
    return process, f"http://127.0.0.1:{port}"


class Api:
    """The public REST API with one key (synchronous; tests poll it)."""

    def __init__(self, base_url: str, key: str) -> None:
        self.client = httpx.Client(base_url=base_url, timeout=30,
                                   headers={"Authorization": f"Bearer {key}"})

    def call(self, method: str, path: str, expect: Iterable[int] = (200, 201, 202),
             **kwargs: Any) -> Any:
        resp = self.client.request(method, path, **kwargs)
        assert resp.status_code in set(expect), f"{method} {path}: {resp.status_code} {resp.text}"
        return resp.json() if resp.content else None

    def workflow(self, slug: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Create and publish a workflow; return the published version."""
        self.call("POST", "/api/workflows", json={"slug": slug, "name": slug, "spec": spec})
        version: dict[str, Any] = self.call("POST", f"/api/workflows/{slug}/publish")
        return version

    def execute(self, slug: str, payload: dict[str, Any] | None = None,
                external_id: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"input": payload or {}}
        if external_id is not None:
            body["externalId"] = external_id
        answer: dict[str, Any] = self.call("POST", f"/api/workflows/{slug}/execute", json=body)
        return answer

    def execution(self, execution_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.call("GET", f"/api/executions/{execution_id}")
        return answer

    def wait_status(self, execution_id: str, statuses: Iterable[str] = TERMINAL,
                    timeout: float = 60.0) -> dict[str, Any]:
        """Poll the execution until its status is one of `statuses`; return it."""
        wanted = set(statuses)

        def reached() -> dict[str, Any] | None:
            doc = self.execution(execution_id)
            return doc if doc["status"] in wanted else None

        try:
            return dict(wait_for(reached, timeout, f"execution {execution_id} in {wanted}", 0.2))
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last seen: {self.execution(execution_id)}") from None

    def wait_finished(self, execution_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until the execution ended (the sink projects its history in order, so the
        steps[] of an ended execution are final)."""
        return self.wait_status(execution_id, TERMINAL, timeout)

    def wait_for_step(self, execution_id: str, node_id: str, status: str,
                      timeout: float = 60.0) -> dict[str, Any]:
        """Poll until the execution's step `node_id` has `status`; return the step."""

        def reached() -> dict[str, Any] | None:
            steps = self.execution(execution_id).get("steps") or []
            return next((s for s in steps if s["nodeId"] == node_id and s["status"] == status),
                        None)

        return dict(wait_for(reached, timeout, f"step {node_id} of {execution_id} {status}", 0.2))

    def pages(self, path: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Every item of a paginated list."""
        items: list[dict[str, Any]] = []
        query = {**(params or {}), "limit": 200}
        while True:
            page = self.call("GET", path, params=query)
            items += page["items"]
            if not page.get("nextCursor"):
                return items
            query["cursor"] = page["nextCursor"]

    def audit_log(self, **params: Any) -> list[dict[str, Any]]:
        return self.pages("/api/audit-log", params)


@dataclass
class System:
    """The five services of one pytest session, the stub they call, and API clients."""

    kafka: KafkaSettings
    database_url: str
    workdir: Path
    stub_url: str
    processes: dict[str, ServiceProcess] = field(default_factory=dict)
    demo: ServiceProcess | None = None
    demo_url: str = ""
    api_port: int = 0
    org_id: str = ""
    admin_key: str = ""
    _api: Api | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def api(self) -> Api:
        assert self._api is not None
        return self._api

    def base_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "CADENZA_KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            "CADENZA_KAFKA_TOPIC_PREFIX": self.kafka.topic_prefix,
            "CADENZA_KAFKA_PARTITIONS": str(self.kafka.partitions),
            "CADENZA_DATABASE_URL": self.database_url,
        }

    def _service_env(self, name: str) -> tuple[dict[str, str], str]:
        """The environment of one service and its health URL."""
        prefix = self.kafka.topic_prefix
        port = free_port()
        env = self.base_env()
        if name == "trigger-api":
            self.api_port = port
            env |= {"CADENZA_API_PORT": str(port), "CADENZA_API_KEY_CACHE_TTL_S": "0",
                    "CADENZA_API_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
                    "CADENZA_API_OUTBOUND_ALLOW_PRIVATE": "true"}
            return env, f"http://127.0.0.1:{port}/readyz"
        if name == "scheduler":
            env |= {"CADENZA_SCHEDULER_APP_ID": f"{prefix}scheduler",
                    "CADENZA_SCHEDULER_WEB_PORT": str(port),
                    "CADENZA_SCHEDULER_DATA_DIR": str(self.workdir / "scheduler-data"),
                    "CADENZA_SCHEDULER_SESSION_TIMEOUT_S": "6",
                    "CADENZA_SCHEDULER_REBALANCE_TIMEOUT_S": "10",
                    # SCHED_TEST_LOG=info keeps Faust's recovery steps in the log
                    "CADENZA_SCHEDULER_LOG_LEVEL": os.environ.get("SCHED_TEST_LOG", "warning")}
            return env, f"http://127.0.0.1:{port}/health/ready"
        if name == "step-runner":
            env |= {"CADENZA_GROUP_ID": f"{prefix}step-runner",
                    "CADENZA_WEBHOOK_GROUP_ID": f"{prefix}webhook-delivery",
                    "CADENZA_METRICS_PORT": str(port), "CADENZA_SESSION_TIMEOUT_MS": "6000",
                    "CADENZA_CONNECTION_CACHE_TTL_S": "0",
                    "CADENZA_WEBHOOK_INITIAL_BACKOFF_S": "0.2",
                    "CADENZA_SECRETS_STUB_TOKEN": "s3cret-stub-token",
                    # what examples/onboarding.yaml needs: the KYC token, the events URL
                    # (an absolute loopback URL, hence private network allowed)
                    "CADENZA_SECRETS_KYC_TOKEN": KYC_TOKEN,
                    "CADENZA_ENV_CUSTOMER_EVENTS_URL": f"{self.demo_url}/events/customer-events",
                    "CADENZA_ALLOW_PRIVATE_NETWORK": "true"}
            return env, f"http://127.0.0.1:{port}/metrics"
        if name == "approvals":
            env |= {"CADENZA_APPROVALS_PORT": str(port),
                    "CADENZA_APPROVALS_GROUP_ID": f"{prefix}approvals"}
            return env, f"http://127.0.0.1:{port}/readyz"
        env |= {"CADENZA_AUDIT_SINK_GROUP_ID": f"{prefix}audit-sink",
                "CADENZA_AUDIT_SINK_METRICS_PORT": str(port),
                "CADENZA_AUDIT_SINK_SESSION_TIMEOUT_MS": "6000"}
        return env, f"http://127.0.0.1:{port}/metrics"

    def start(self, name: str) -> ServiceProcess:
        env, health = self._service_env(name)
        process = self.processes.get(name)
        if process is None:
            process = self.processes[name] = ServiceProcess(name, env, health, self.workdir)
        else:
            process.env, process.health_url = env, health
        process.start()
        return process

    def start_all(self) -> None:
        """The demo service first (the runner's settings name its URL), then the five."""
        self.demo, self.demo_url = demo_process(self.workdir)
        self.demo.start()
        self.demo.wait_ready(60)
        for name in SERVICES:
            self.start(name)
        for name in SERVICES:
            self.processes[name].wait_ready()
        self._bootstrap_org()

    def kill(self, name: str) -> None:
        self.processes[name].kill()

    def restart(self, name: str, *, kill: bool = True) -> None:
        """SIGKILL (or SIGTERM) one service, start it again, wait until it is ready."""
        process = self.processes[name]
        if kill:
            process.kill()
        else:
            process.stop()
        self.start(name).wait_ready()
        if name == "trigger-api":
            self._api = Api(self.api_url, self.admin_key)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.alive() and process.proc is not None:
                os.killpg(process.proc.pid, signal.SIGTERM)
        for process in self.processes.values():
            process.stop()
        if self.demo is not None:
            self.demo.stop()

    def _bootstrap_org(self) -> None:
        result = subprocess.run(
            # the fault suite starts far more than the default 600 executions a minute
            [sys.executable, "-m", "cadenza_trigger_api", "create-org", "e2e",
             "--executions-per-minute", "1000000"],
            env=self.base_env(), capture_output=True, text=True, timeout=60, check=True,
        )
        self.admin_key = result.stdout.strip().splitlines()[-1]
        self.org_id = result.stderr.split("org ", 1)[1].split()[0]
        self._api = Api(self.api_url, self.admin_key)

    def connection(self, name: str, base_url: str | None = None, **extra: Any) -> dict[str, Any]:
        """Register the stub (or `base_url`) as a service connection that may call loopback."""
        body = {"name": name, "baseUrl": base_url or self.stub_url, "allowPrivateNetwork": True,
                **extra}
        created: dict[str, Any] = self.api.call("POST", "/api/service-connections", json=body)
        return created

    def key(self, role: str, name: str | None = None) -> tuple[str, str]:
        """A new API key of `role`: (key id, key)."""
        made = self.api.call("POST", "/api/api-keys",
                             json={"name": name or f"{role}-{uuid.uuid4().hex[:6]}", "role": role})
        return made["id"], made["key"]

    def api_as(self, key: str) -> Api:
        """The API with another key."""
        return Api(self.api_url, key)

    def anonymous(self) -> httpx.Client:
        """A client without a key (signed links need none)."""
        return httpx.Client(timeout=30)

    def wait_for_task(self, api: Api, execution_id: str, node_id: str,
                      timeout: float = 60.0) -> dict[str, Any]:
        """The open approval task of that step in `api`'s key's inbox."""

        def found() -> dict[str, Any] | None:
            return next((t for t in api.pages("/api/approvals")
                         if t["executionId"] == execution_id and t["nodeId"] == node_id), None)

        return dict(wait_for(found, timeout, f"approval task {node_id} of {execution_id}", 0.2))

    def verify_audit_chain(self) -> subprocess.CompletedProcess[str]:
        """`python -m cadenza_audit_sink verify --org <org>` for the session's org."""
        return subprocess.run(
            [sys.executable, "-m", "cadenza_audit_sink", "verify", "--org", self.org_id],
            env=self.base_env(), capture_output=True, text=True, timeout=120, check=False,
        )

    def logs_with_tracebacks(self) -> str:
        every = [*self.processes.values(), *([self.demo] if self.demo else [])]
        return "\n".join(
            f"--- {p.name} log (tail) ---\n{p.tail()}"
            for p in every if "Traceback" in p.tail(200_000)
        )
