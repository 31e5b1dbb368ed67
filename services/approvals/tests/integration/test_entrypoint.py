"""`python -m cadenza_approvals` starts from the environment, serves health and stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

from cadenza_common.settings import KafkaSettings

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return int(resp.status)


def test_the_module_runs_serves_health_and_stops_on_sigterm(
    fresh_kafka: KafkaSettings, database_url: str
) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "CADENZA_KAFKA_BOOTSTRAP_SERVERS": fresh_kafka.bootstrap_servers,
        "CADENZA_KAFKA_TOPIC_PREFIX": fresh_kafka.topic_prefix,
        "CADENZA_DATABASE_URL": database_url,
        "CADENZA_APPROVALS_PORT": str(port),
        "CADENZA_APPROVALS_GROUP_ID": f"approvals-main-{uuid.uuid4().hex[:8]}",
    }
    proc = subprocess.Popen([sys.executable, "-m", "cadenza_approvals"], env=env)
    try:
        ready = _wait_ready(f"http://127.0.0.1:{port}", proc)

        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    assert ready
    assert code == 0


def _wait_ready(url: str, proc: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if _get(f"{url}/healthz") == 200 and _get(f"{url}/readyz") == 200:
                return True
        except OSError:
            pass
        time.sleep(0.2)
    return False
