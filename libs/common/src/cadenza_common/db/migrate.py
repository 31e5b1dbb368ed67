"""Run the Alembic migrations programmatically (the launcher, tests and services use this)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at Cadenza's migrations and the given database URL."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _run(fn: object, url: str, revision: str) -> None:
    # Alembic's async env.py calls asyncio.run(); do it in a fresh thread when a loop is running.
    def call() -> None:
        fn(alembic_config(url), revision)  # type: ignore[operator]

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        call()
        return
    import threading

    errors: list[BaseException] = []

    def target() -> None:
        try:
            call()
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def upgrade(url: str, revision: str = "head") -> None:
    """Upgrade the database at `url` to `revision` (default: the newest)."""
    _run(command.upgrade, url, revision)


def downgrade(url: str, revision: str = "base") -> None:
    """Downgrade the database at `url` to `revision` (default: empty)."""
    _run(command.downgrade, url, revision)
