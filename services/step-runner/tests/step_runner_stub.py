"""A real local HTTP service for the runner's tests: FastAPI served by uvicorn in a thread."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse


@dataclass
class Seen:
    """One request the stub received."""

    path: str
    method: str
    headers: dict[str, str]
    body: bytes
    query: dict[str, str]


@dataclass
class StubState:
    """What the stub saw, and per-key scripted statuses (`/scripted/{key}`)."""

    seen: list[Seen] = field(default_factory=list)
    scripts: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))

    def requests_to(self, prefix: str) -> list[Seen]:
        return [s for s in self.seen if s.path.startswith(prefix)]


def build_app(state: StubState) -> FastAPI:
    app = FastAPI()

    async def record(request: Request) -> Seen:
        seen = Seen(
            path=request.url.path,
            method=request.method,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=await request.body(),
            query=dict(request.query_params),
        )
        state.seen.append(seen)
        return seen

    @app.api_route("/echo/{key}", methods=["GET", "POST", "PUT"])
    async def echo(key: str, request: Request) -> Response:
        seen = await record(request)
        return JSONResponse({"key": key, "body": seen.body.decode(), "query": seen.query})

    @app.api_route("/scripted/{key}", methods=["GET", "POST"])
    async def scripted(key: str, request: Request) -> Response:
        await record(request)
        script = state.scripts[key]
        status = script.pop(0) if len(script) > 1 else (script[0] if script else 200)
        headers = (
            {"Retry-After": request.query_params["retry_after"]}
            if ("retry_after" in request.query_params)
            else {}
        )
        return JSONResponse({"status": status}, status_code=status, headers=headers)

    @app.get("/slow")
    async def slow(request: Request, delay: float = 1.0) -> Response:
        await asyncio.sleep(delay)
        return JSONResponse({"slept": delay})

    @app.get("/jitter")
    async def jitter(request: Request, max_ms: int = 50) -> Response:
        await asyncio.sleep(random.uniform(0, max_ms) / 1000)
        return JSONResponse({"ok": True})

    @app.get("/big")
    async def big(size: int) -> Response:
        return Response(b'"' + b"x" * size + b'"', media_type="application/json")

    @app.get("/fast")
    async def fast() -> Response:
        return Response(b'{"ok":true}', media_type="application/json")

    return app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class StubServer:
    """Runs the stub app on a free loopback port in a background thread."""

    def __init__(self, state: StubState | None = None) -> None:
        self.state = state or StubState()
        self.port = free_port()
        config = uvicorn.Config(
            build_app(self.state),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> StubServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("stub server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
