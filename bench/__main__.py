"""`python -m bench [NAME ...]`: run the named benchmarks (default: list them)."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def available() -> list[str]:
    here = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name not in {"report"})


def main(names: list[str]) -> int:
    if not names:
        print("benchmarks:", ", ".join(available()) or "(none yet)")
        print("run: python -m bench NAME [NAME ...]  (each writes bench/results/NAME.json)")
        return 0
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
