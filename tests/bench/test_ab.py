"""`python -m bench ab`: its arguments, the sources each side runs, and the medians it prints."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: `bench`

from bench import ab


def test_the_new_side_defaults_to_the_working_tree_and_bad_arguments_are_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ab.parse(["main~3", "--env", "CADENZA_BENCH_PACED_RATE=1000"])
    assert (args.base, args.new, args.runs, args.bench) == ("main~3", ".", 3, "scheduler")
    assert args.env == ["CADENZA_BENCH_PACED_RATE=1000"]

    with pytest.raises(SystemExit):
        ab.parse(["main", "--env", "NO_VALUE"])
    assert "is not KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ab.parse(["main", "--runs", "0"])
    assert "at least 1" in capsys.readouterr().err


def test_each_side_puts_every_package_source_of_its_own_tree_first(tmp_path: Path) -> None:
    for package in ("libs/common", "services/scheduler", "services/step-runner", "deploy/local"):
        (tmp_path / package / "src").mkdir(parents=True)
    (tmp_path / "bench").mkdir()

    path = ab.source_path(tmp_path).split(":")

    assert path == sorted(
        str(tmp_path / p / "src")
        for p in ("deploy/local", "libs/common", "services/scheduler", "services/step-runner")
    )


def test_the_summary_is_the_median_of_each_figure_per_phase_and_side() -> None:
    def row(side: str, run: int, phase: str, rate: float, p99: float) -> dict[str, object]:
        return {
            "side": side,
            "run": run,
            "phase": phase,
            "transitions_per_s": rate,
            "p99_ms": p99,
            "in_flight": "" if phase.startswith("paced") else 600,
        }

    runs = [
        row("base", 1, "saturation", 1900.0, 300.0),
        row("base", 1, "paced 950/s", 950.0, 30.0),
        row("new", 1, "saturation", 2100.0, 280.0),
        row("new", 1, "paced 1,050/s", 1050.0, 20.0),
        row("base", 2, "saturation", 1700.0, 320.0),
        row("base", 2, "paced 850/s", 850.0, 40.0),
        row("new", 2, "saturation", 2000.0, 260.0),
        row("new", 2, "paced 1,000/s", 1000.0, 24.0),
        row("base", 3, "saturation", 1800.0, 310.0),
        row("new", 3, "saturation", 2200.0, 250.0),
    ]

    medians = ab.summary(runs)

    assert [(m["phase"], m["side"], m["runs"]) for m in medians] == [
        ("saturation", "base", 3),
        ("paced", "base", 2),
        ("saturation", "new", 3),
        ("paced", "new", 2),
    ]
    by = {(m["phase"], m["side"]): m for m in medians}
    assert by["saturation", "base"]["transitions_per_s"] == 1800.0
    assert by["saturation", "new"]["p99_ms"] == 260.0
    assert by["paced", "new"]["p99_ms"] == 22.0
    assert by["saturation", "base"]["in_flight"] == 600
    assert "in_flight" not in by["paced", "base"]  # text cells have no median
    assert "run" not in by["paced", "base"]
