"""The demo service over real HTTP: deterministic answers, Idempotency-Key stats, latency."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from cadenza_demo.app import DemoSettings
from cadenza_demo.server import demo_server, free_port


@pytest.fixture(scope="module")
def demo() -> Iterator[httpx.Client]:
    with demo_server(DemoSettings(kyc_token="t0ken")) as url, httpx.Client(
        base_url=url, headers={"Authorization": "Bearer t0ken"}, timeout=5
    ) as client:
        yield client


def verify(client: httpx.Client, nik: str, key: str | None = None) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return client.post("/v1/ktp/verify", json={"nik": nik, "name": "Siti"}, headers=headers)


@pytest.mark.parametrize(
    ("nik", "verdict"),
    [("3171234567890001", "passed"), ("3171234567890007", "requires_review"),
     ("3171234567890008", "rejected")],
)
def test_the_last_digit_of_the_nik_decides_the_verdict(
    demo: httpx.Client, nik: str, verdict: str
) -> None:
    response = verify(demo, nik)

    assert response.status_code == 200
    assert response.json()["verdict"] == verdict


def test_an_unreadable_ktp_is_a_422(demo: httpx.Client) -> None:
    response = verify(demo, "3171234567890009")

    assert response.status_code == 422


def test_ktp_verification_needs_the_configured_token(demo: httpx.Client) -> None:
    response = demo.post("/v1/ktp/verify", json={"nik": "3171234567890001", "name": "x"},
                         headers={"Authorization": "Bearer wrong"})

    assert response.status_code == 401


@pytest.mark.parametrize(
    ("name", "result"),
    [("Siti Rahma", "clear"), ("Dewi Sanksi", "confirmed_hit"),
     ("Agus Sanctioned", "confirmed_hit"), ("Possible Person", "possible_match")],
)
def test_the_name_decides_the_screening(demo: httpx.Client, name: str, result: str) -> None:
    response = demo.post("/v2/screen", json={"name": name, "nik": "3171234567890001"})

    assert response.status_code == 200
    assert response.json()["result"] == result


def test_crm_upsert_creates_then_updates(demo: httpx.Client) -> None:
    first = demo.put("/v1/customers/c-42", json={"name": "Siti"})
    second = demo.put("/v1/customers/c-42", json={"name": "Siti R."})

    assert first.json()["created"] is True
    assert second.json()["created"] is False
    assert second.json()["version"] == 2
    assert demo.get("/v1/customers/c-42").json()["record"]["name"] == "Siti R."


def test_compensation_deletes_the_capture(demo: httpx.Client) -> None:
    response = demo.delete("/v1/ktp/verify/c-42")

    assert response.json() == {"customer_id": "c-42", "deleted": True}


def test_stats_count_every_idempotency_key(demo: httpx.Client) -> None:
    demo.post("/stats/reset")
    for key in ("x:a", "x:b", "x:a", "x:a"):
        verify(demo, "3171234567890001", key)

    stats = demo.get("/stats").json()

    assert stats["keys"] == {"x:a": 3, "x:b": 1}
    assert stats["duplicates"] == 2
    assert stats["distinct_keys"] == 2


def test_flaky_endpoint_fails_then_succeeds(demo: httpx.Client) -> None:
    headers = {"Idempotency-Key": "flaky:1"}

    codes = [demo.post("/v1/flaky/f?fail_times=2", headers=headers).status_code
             for _ in range(3)]

    assert codes == [503, 503, 200]


def test_webhooks_are_received_and_listed(demo: httpx.Client) -> None:
    demo.post("/events/customer-events", json={"event": "customer.onboarded"})

    events = demo.get("/events", params={"channel": "customer-events"}).json()

    assert '"customer.onboarded"' in events[-1]["body"]


def test_openapi_document_lists_the_endpoints(demo: httpx.Client) -> None:
    doc = demo.get("/openapi.json").json()

    assert {"/v1/ktp/verify", "/v2/screen", "/v1/customers/{customer_id}", "/stats"} <= set(
        doc["paths"]
    )


def test_random_latency_delays_answers() -> None:
    with demo_server(DemoSettings(latency_min_ms=30, latency_max_ms=40)) as url:
        started = time.perf_counter()
        httpx.post(f"{url}/v2/screen", json={"name": "a"})
        elapsed = time.perf_counter() - started

    assert elapsed >= 0.03


def test_command_line_serves_on_the_given_port() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cadenza_demo", "--port", str(port),
                             "--instant"], env={**os.environ})
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/healthz")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the demo did not start"
                time.sleep(0.1)

        assert response.json() == {"status": "ok"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
