"""Print a benchmark's table and write its figures to `bench/results/<name>.json`."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

RESULTS = Path(__file__).parent / "results"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of values, nearest-rank; 0.0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


def report(
    name: str,
    rows: list[dict[str, Any]],
    notes: str = "",
    extra: dict[str, Any] | None = None,
) -> Path:
    """Print `rows` as a table and save them with the machine's description (and `extra`,
    more of the run's figures, kept beside the rows); return the path."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print(f"\n{name}")
    print("  ".join(c.ljust(widths[c]) for c in columns))
    print("  ".join("-" * widths[c] for c in columns))
    for row in rows:
        print("  ".join(_fmt(row.get(c)).ljust(widths[c]) for c in columns))
    if notes:
        print(notes)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    doc = {
        "name": name,
        "at": datetime.now(UTC).isoformat(),
        "machine": {"cpus": _cpus(), "python": platform.python_version()},
        "rows": rows,
        "notes": notes,
        **(extra or {}),
    }
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    return path


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    return "" if value is None else str(value)
