"""Entry point of the approvals service: `python -m cadenza_approvals`."""

from __future__ import annotations

import asyncio
import logging
import signal

from cadenza_approvals.service import ApprovalsService
from cadenza_approvals.settings import Settings


async def main() -> None:
    """Run the service until SIGINT/SIGTERM."""
    settings = Settings()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await ApprovalsService(settings).run(stop)


def run() -> None:
    """Console-script entry point."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(main())


if __name__ == "__main__":
    run()
