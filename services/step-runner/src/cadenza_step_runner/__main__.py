"""Entry point of the step-runner service: `python -m cadenza_step_runner`."""

from __future__ import annotations

import asyncio
import logging
import signal

from prometheus_client import start_http_server

from cadenza_step_runner.app import serve
from cadenza_step_runner.settings import Settings


async def main() -> None:
    """Read settings, serve metrics, run until SIGTERM/SIGINT, then drain."""
    settings = Settings()
    settings.security.check_production_secrets()
    if settings.metrics_port:
        start_http_server(settings.metrics_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(settings, stop)


def run() -> None:
    """Console script: `cadenza-step-runner`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        asyncio.run(main())
    else:
        uvloop.run(main())


if __name__ == "__main__":
    run()
