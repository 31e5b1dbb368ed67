"""Where the local stack keeps its files and which ports it chose (`<repo>/.cadenza/stack.json`)."""

from __future__ import annotations

import json
import os
import shutil
import socket
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar, cast

REPO_ROOT = Path(__file__).resolve().parents[4]


class MissingPrerequisite(RuntimeError):
    """A tool the stack needs (Java, Maven, PostgreSQL) is not installed; the text says how to."""


def state_dir() -> Path:
    """The state directory: `CADENZA_STATE_DIR` or `<repo>/.cadenza`."""
    configured = os.environ.get("CADENZA_STATE_DIR")
    return Path(configured).resolve() if configured else REPO_ROOT / ".cadenza"


T = TypeVar("T")


def load_json_fields(cls: type[T], path: Path) -> T:
    """A dataclass from the JSON file at `path` (defaults when missing; unknown keys dropped)."""
    if not path.exists():
        return cls()
    data = json.loads(path.read_text())
    names = {f.name for f in fields(cast(Any, cls))}
    return cls(**{k: v for k, v in data.items() if k in names})


def free_port() -> int:
    """Ask the OS for a free TCP port on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int | None) -> bool:
    """True when a process with this pid exists (and is not a zombie)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and ") Z " in stat.read_text())


def require_tool(name: str, how: str) -> str:
    """Return the path of an executable, or raise MissingPrerequisite saying how to install it."""
    found = shutil.which(name)
    if not found:
        raise MissingPrerequisite(f"`{name}` not found on PATH. {how}")
    return found


@dataclass
class StackState:
    """Ports and paths of the running (or last) stack, persisted as JSON."""

    kafka_port: int = 0
    kafka_controller_port: int = 0
    kafka_pid: int | None = None
    postgres_port: int = 0
    postgres_data_dir: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: Path) -> StackState:
        return load_json_fields(cls, directory / "stack.json")

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / "stack.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(directory / "stack.json")

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    def database_url(self, database: str = "cadenza") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.postgres_port}/{database}"
