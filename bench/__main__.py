"""`python -m bench [NAME ...]`: run the named benchmarks (default: list them).

`python -m bench ab BASE [NEW] ...` runs one benchmark against two versions of the
services, alternated (`bench.ab`)."""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from pathlib import Path


def available() -> list[str]:
    here = Path(__file__).parent
    tools = {"ab", "report", "__main__"}
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name not in tools)


def use_local_stack() -> None:
    """Point the benchmarks at the running local stack unless servers are configured."""
    if os.environ.get("CADENZA_TEST_KAFKA") and os.environ.get("CADENZA_TEST_DATABASE_URL"):
        return
    from cadenza_devstack.stack import Stack

    stack = Stack()
    if not all(stack.status().values()):
        raise SystemExit(
            "start the local stack first (`make up`) or set CADENZA_TEST_KAFKA "
            "and CADENZA_TEST_DATABASE_URL"
        )
    info = stack.info()
    os.environ.setdefault("CADENZA_TEST_KAFKA", info.bootstrap_servers)
    os.environ.setdefault("CADENZA_TEST_DATABASE_URL", info.database_url)


def main(names: list[str]) -> int:
    if not names:
        print("benchmarks:", ", ".join(available()) or "(none yet)")
        print("run: python -m bench NAME [NAME ...]  (each writes bench/results/NAME.json)")
        print("compare two revisions: python -m bench ab BASE [NEW] [--runs N] [--bench NAME]")
        return 0
    use_local_stack()  # here: a side of `ab` runs another tree's devstack, which finds none
    if names[0] == "ab":
        from bench import ab

        ab.main(names[1:])
        return 0
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
