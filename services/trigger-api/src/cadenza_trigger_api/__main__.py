"""`python -m cadenza_trigger_api [serve]` runs the API and the outbox relay;
`python -m cadenza_trigger_api create-org NAME` creates an org and prints its admin key."""

from __future__ import annotations

import argparse
import asyncio
import sys

import uvicorn

from cadenza_common.db.engine import create_engine
from cadenza_trigger_api.app import create_app
from cadenza_trigger_api.auth import KeyHasher
from cadenza_trigger_api.orgs import create_org
from cadenza_trigger_api.settings import Settings


async def _create_org(settings: Settings, name: str, per_minute: int | None) -> None:
    engine = create_engine(settings.database)
    try:
        org = await create_org(engine, KeyHasher(settings.security), name,
                               executions_per_minute=per_minute)
    finally:
        await engine.dispose()
    print(f"org {org.org_id} created; bootstrap admin API key (shown once):", file=sys.stderr)
    print(org.key)


def run(argv: list[str] | None = None) -> None:
    """Parse the command line and run it."""
    parser = argparse.ArgumentParser(prog="cadenza_trigger_api")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="serve the API with uvicorn and run the outbox relay")
    org = sub.add_parser("create-org", help="create an org and print its bootstrap admin key")
    org.add_argument("name")
    org.add_argument("--executions-per-minute", type=int, default=None)
    args = parser.parse_args(argv)
    settings = Settings()
    if args.command == "create-org":
        asyncio.run(_create_org(settings, args.name, args.executions_per_minute))
        return
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    run()
