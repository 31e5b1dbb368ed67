"""A private PostgreSQL cluster from the machine's binaries, data under the state directory.

PostgreSQL refuses to run as root, so when we are root every `initdb`/`pg_ctl`
runs as the `postgres` system user (`runuser -u postgres -- ...`) and the data
directory belongs to that user. Connections go over TCP on loopback only.
"""

from __future__ import annotations

import asyncio
import glob
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import asyncpg

from cadenza_devstack.state import MissingPrerequisite, StackState, free_port, port_open

INSTALL_HINT = (
    "Install the PostgreSQL server binaries (Debian/Ubuntu: `apt-get install -y postgresql`; "
    "`make test` does this for you when run as root)."
)

POSTGRESQL_CONF = """
# cadenza local stack
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = ''
max_connections = 300
shared_buffers = 128MB
fsync = off
synchronous_commit = off
full_page_writes = off
log_min_messages = warning
"""


def find_bindir() -> Path:
    """Directory of `initdb`/`pg_ctl`: `CADENZA_PG_BINDIR`, Debian's layout, or PATH."""
    configured = os.environ.get("CADENZA_PG_BINDIR")
    candidates = [configured] if configured else []
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True
    )
    candidates += versions
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    raise MissingPrerequisite(f"PostgreSQL binaries (initdb, pg_ctl) not found. {INSTALL_HINT}")


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _accessible_by_postgres(path: Path) -> bool:
    if os.geteuid() != 0:
        return True
    probe = subprocess.run(_as_postgres(["test", "-x", str(path)]), check=False)
    return probe.returncode == 0


class PostgresServer:
    """initdb (once), start, stop and probe the local cluster."""

    def __init__(self, state_dir: Path, state: StackState) -> None:
        self.state = state
        self.state_dir = state_dir

    @property
    def data_dir(self) -> Path:
        if not self.state.postgres_data_dir:
            self.state.postgres_data_dir = str(self._choose_home() / "data")
        return Path(self.state.postgres_data_dir)

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / "postgres.log"

    def _choose_home(self) -> Path:
        home = self.state_dir / "postgres"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if _accessible_by_postgres(self.state_dir):
            return home
        # The postgres user cannot reach the repo (e.g. under /root): keep data in /var/tmp.
        digest = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:10]
        return Path("/var/tmp") / f"cadenza-{digest}" / "postgres"  # noqa: S108  (private, per-repo dir)

    def running(self) -> bool:
        if not self.state.postgres_port or not self.data_dir.exists():
            return False
        status = subprocess.run(
            _as_postgres([str(find_bindir() / "pg_ctl"), "status", "-D", str(self.data_dir)]),
            check=False,
            capture_output=True,
        )
        return status.returncode == 0 and port_open(self.state.postgres_port)

    def init(self) -> None:
        """Create the cluster on first use (trust auth, loopback only)."""
        if (self.data_dir / "PG_VERSION").exists():
            return
        home = self.data_dir.parent
        home.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(home, "postgres", "postgres")
        subprocess.run(
            _as_postgres(
                [
                    str(find_bindir() / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--no-locale",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def start(self) -> None:
        """Start the cluster and wait until it accepts connections."""
        self.init()
        if not self.state.postgres_port or port_open(self.state.postgres_port):
            self.state.postgres_port = int(os.environ.get("CADENZA_POSTGRES_PORT") or free_port())
        conf = self.data_dir / "postgresql.auto.conf"
        conf_text = POSTGRESQL_CONF.format(port=self.state.postgres_port)
        subprocess.run(
            _as_postgres(["sh", "-c", f"cat > '{conf}'"]), input=conf_text.encode(), check=True
        )
        subprocess.run(
            _as_postgres(
                [
                    str(find_bindir() / "pg_ctl"),
                    "start",
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-w",
                    "-t",
                    "60",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster (`fast` rolls back open transactions; `immediate` is a crash)."""
        if not self.data_dir.exists():
            return
        subprocess.run(
            _as_postgres(
                [
                    str(find_bindir() / "pg_ctl"),
                    "stop",
                    "-D",
                    str(self.data_dir),
                    "-m",
                    mode,
                    "-w",
                    "-t",
                    "60",
                ]
            ),
            check=False,
            capture_output=True,
        )

    def create_database(self, name: str) -> None:
        """Create a database if it does not exist yet."""
        asyncio.run(_create_database(self.state.postgres_port, name))


async def _create_database(port: int, name: str) -> None:
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database="postgres")
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
