"""`python -m bench ab BASE [NEW] [--runs N] [--bench NAME] [--env KEY=VALUE ...]`.

One benchmark, two versions of the services, runs alternated: BASE, NEW, BASE, NEW, ...

This machine's speed drifts by a quarter within an hour (bench/README.md, scheduler session
17): the same scheduler code went from ~2,000 to ~1,600 transitions/s. Only runs taken in the
same minutes, alternated, compare two versions. BASE and NEW are git revisions; NEW `.`
(the default) is the working tree. A revision is checked out in a temporary git worktree.

Both sides run the benchmark code of the working tree (the same harness and figures); only
the services' sources differ: each side's `libs/*/src`, `services/*/src` and `deploy/*/src`
come first on `PYTHONPATH`, for the benchmark and for what it starts (the scheduler
process inherits the environment). `--env` sets variables for both sides, e.g.
`--env CADENZA_BENCH_PACED_RATE=1000`.

Prints every run's main figures, then the median of each figure per phase and side, and
writes all rows to `bench/results/ab-NAME.json`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.report import RESULTS, report

ROOT = Path(__file__).resolve().parent.parent
SHOWN = ("transitions_per_s", "p50_ms", "p99_ms", "cpu_main_us", "machine_us")


@dataclass(frozen=True)
class Side:
    label: str  # "base" or "new"
    revision: str  # a git revision, or "." for the working tree
    root: Path  # where its sources are


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench ab", description=__doc__)
    parser.add_argument("base", help="git revision of the services to compare against")
    parser.add_argument("new", nargs="?", default=".", help="git revision, or . (working tree)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each side (default 3)")
    parser.add_argument("--bench", default="scheduler", help="benchmark (default scheduler)")
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="for both sides"
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    for item in args.env:
        if "=" not in item:
            parser.error(f"--env {item!r} is not KEY=VALUE")
    return args


def source_path(root: Path) -> str:
    """`PYTHONPATH` putting the sources under `root` first: every package's `src`."""
    sources = sorted(
        str(src)
        for pattern in ("libs/*/src", "services/*/src", "deploy/*/src")
        for src in root.glob(pattern)
    )
    return os.pathsep.join(sources)


def phase_of(row: dict[str, Any]) -> str:
    """`saturation` or `paced`: a paced phase's label carries its rate, which differs by run."""
    return str(row.get("phase", "")).split(" ", 1)[0]


def summary(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The median of each numeric figure per phase and side, from `runs` (each a bench row
    with `side` and `run` added), in the order the phases and sides first appear."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in runs:
        groups.setdefault((phase_of(row), row["side"]), []).append(row)
    medians = []
    for (phase, side), rows in groups.items():
        figures: dict[str, Any] = {"phase": phase, "side": side, "runs": len(rows)}
        for key in dict.fromkeys(k for row in rows for k in row if k != "run"):
            values = [
                row[key]
                for row in rows
                if isinstance(row.get(key), int | float) and not isinstance(row[key], bool)
            ]
            if values:
                figures[key] = round(statistics.median(values), 2)
        medians.append(figures)
    return medians


def run_once(side: Side, bench: str, env: dict[str, str]) -> list[dict[str, Any]]:
    """Run the benchmark once against `side`'s sources; its rows."""
    result = RESULTS / f"{bench}.json"
    result.unlink(missing_ok=True)
    inherited = os.environ.get("PYTHONPATH")
    path = source_path(side.root) + (os.pathsep + inherited if inherited else "")
    done = subprocess.run(
        [sys.executable, "-m", "bench", bench],
        cwd=ROOT,
        env={**os.environ, **env, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or not result.exists():
        raise SystemExit(
            f"bench {bench} failed on {side.label} ({side.revision}):\n{done.stderr[-3000:]}"
        )
    rows: list[dict[str, Any]] = orjson.loads(result.read_bytes())["rows"]
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(sys.argv[2:] if argv is None else argv)
    env = dict(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory(prefix="cadenza-ab-") as tmp:
        sides = []
        worktrees = []
        try:
            for label, revision in (("base", args.base), ("new", args.new)):
                root = ROOT
                if revision != ".":
                    root = Path(tmp) / label
                    subprocess.run(
                        ["git", "worktree", "add", "--detach", str(root), revision],
                        cwd=ROOT,
                        check=True,
                        capture_output=True,
                    )
                    worktrees.append(root)
                sides.append(Side(label, revision, root))
            runs = []
            for run in range(1, args.runs + 1):
                for side in sides:
                    for row in run_once(side, args.bench, env):
                        runs.append({"side": side.label, "run": run, **row})
                        shown = {k: row.get(k) for k in ("phase", *SHOWN)}
                        print(side.label, run, *(f"{k}={v}" for k, v in shown.items()))
        finally:
            for root in worktrees:
                subprocess.run(
                    ["git", "worktree", "remove", "--force", str(root)],
                    cwd=ROOT,
                    check=False,
                    capture_output=True,
                )
    revisions = f"base {args.base}, new {args.new}"
    notes = f"medians of {args.runs} runs; {revisions}"
    report(f"ab-{args.bench}", summary(runs), notes=notes, extra={"runs": runs})
