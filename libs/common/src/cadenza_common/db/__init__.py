"""Postgres access: the async engine factory, table definitions and migrations."""

from cadenza_common.db.engine import create_engine, session_scope
from cadenza_common.db.migrate import downgrade, upgrade

__all__ = ["create_engine", "downgrade", "session_scope", "upgrade"]
