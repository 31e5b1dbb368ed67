"""A real FastAPI service the end-to-end workflows call, programmable per request.

Every request is recorded (method, path, `Idempotency-Key`, body, headers). The
behaviour comes from the query string, so a workflow spec says what the call does:

    ?fail=N           answer `status` (default 503) to the first N calls of this
                      Idempotency-Key and path, then succeed
    ?fail=always      always answer `status`
    ?status=S         the failing status (503, 400, ...)
    ?latency_ms=A-B   sleep a random time between A and B ms (or a fixed `A`)

A success answers `{"path", "method", "body", "query", "attempt"}` (attempt = how
many times this key and path were seen), or the JSON in `?answer=` when given.
"""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI, Request, Response


@dataclass(frozen=True)
class Call:
    """One request the stub received."""

    method: str
    path: str
    idempotency_key: str | None
    body: Any
    headers: dict[str, str]
    at: float
    raw: bytes = b""


@dataclass
class Recorder:
    """What the stub saw; read from test threads, written from the server's thread."""

    calls: list[Call] = field(default_factory=list)
    seen: Counter[tuple[str, str | None]] = field(default_factory=Counter)
    in_flight: Counter[str] = field(default_factory=Counter)
    max_in_flight: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, call: Call) -> int:
        with self.lock:
            self.calls.append(call)
            self.seen[(call.path, call.idempotency_key)] += 1
            return self.seen[(call.path, call.idempotency_key)]

    def entered(self, group: str) -> None:
        """A call of `group` (the first path segment) began; track the peak concurrency."""
        with self.lock:
            self.in_flight[group] += 1
            self.max_in_flight[group] = max(self.max_in_flight[group], self.in_flight[group])

    def left(self, group: str) -> None:
        with self.lock:
            self.in_flight[group] -= 1

    def matching(self, prefix: str) -> list[Call]:
        """Calls whose path starts with `prefix`."""
        with self.lock:
            return [c for c in self.calls if c.path.startswith(prefix)]


def _latency(spec: str | None) -> float:
    if not spec:
        return 0.0
    low, _, high = spec.partition("-")
    a = float(low)
    b = float(high) if high else a
    return random.uniform(a, b) / 1000.0


def _body(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode(errors="replace")


def create_stub_app(recorder: Recorder) -> FastAPI:
    """The stub's app: one catch-all route that behaves as its query string says."""
    app = FastAPI(title="cadenza e2e stub")

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def anything(path: str, request: Request) -> Response:
        query = dict(request.query_params)
        raw = await request.body()
        call = Call(
            method=request.method,
            path="/" + path,
            idempotency_key=request.headers.get("idempotency-key"),
            body=_body(raw),
            headers={k.lower(): v for k, v in request.headers.items()},
            at=time.time(),
            raw=raw,
        )
        attempt = recorder.record(call)
        group = path.split("/", 1)[0]
        recorder.entered(group)
        try:
            await asyncio.sleep(_latency(query.get("latency_ms")))
        finally:
            recorder.left(group)
        fail = query.get("fail")
        if fail == "always" or (fail is not None and attempt <= int(fail)):
            status = int(query.get("status", "503"))
            return Response(orjson.dumps({"error": "stub failure", "attempt": attempt}),
                            status_code=status, media_type="application/json")
        if "answer" in query:
            return Response(query["answer"], media_type="application/json")
        answer = {"path": call.path, "method": call.method, "body": call.body,
                  "query": query, "attempt": attempt}
        return Response(orjson.dumps(answer), media_type="application/json")

    return app


class StubServer:
    """The stub on a free loopback port, served by uvicorn in a thread of the test process."""

    def __init__(self) -> None:
        self.recorder = Recorder()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(create_stub_app(self.recorder), host="127.0.0.1", port=self.port,
                                log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="e2e-stub", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> StubServer:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the stub server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
