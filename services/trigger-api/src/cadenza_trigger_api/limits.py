"""Request body size limit, enforced on the declared length and on the bytes actually read."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cadenza_trigger_api.errors import PayloadTooLarge, problem_response


class _TooLarge(PayloadTooLarge):
    """Raised inside the app while reading; the problem handlers render it as 413."""


class BodyLimitMiddleware:
    """Answers 413 problem+json when a request body exceeds `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._reject(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge(f"request bodies are limited to {self.max_bytes} bytes")
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        problem = PayloadTooLarge(f"request bodies are limited to {self.max_bytes} bytes")
        await problem_response(problem, scope.get("path", ""))(scope, receive, send)
