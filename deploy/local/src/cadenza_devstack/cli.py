"""`cadenza-dev` / `python -m cadenza_devstack`: up, run, down, status, logs, env."""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys

from cadenza_devstack.demo import RunOptions, run_demo
from cadenza_devstack.stack import Stack
from cadenza_devstack.state import MissingPrerequisite


def _up(stack: Stack, _: argparse.Namespace) -> int:
    info = stack.up()
    print("Cadenza local stack is up:")
    for key, value in info.env().items():
        print(f"  {key}={value}")
    return 0


def _down(stack: Stack, _: argparse.Namespace) -> int:
    stack.down()
    print("Cadenza local stack is down.")
    return 0


def _run(stack: Stack, args: argparse.Namespace) -> int:
    _up(stack, args)
    try:
        return asyncio.run(run_demo(stack.info(), stack.dir, RunOptions(once=args.once)))
    finally:
        stack.down()
        print("Cadenza local stack is down (data kept for the next run).")


def _status(stack: Stack, _: argparse.Namespace) -> int:
    status = stack.status()
    for name, running in status.items():
        print(f"{name}: {'running' if running else 'stopped'}")
    if all(status.values()):
        for key, value in stack.info().env().items():
            print(f"  {key}={value}")
        return 0
    return 3


def _env(stack: Stack, _: argparse.Namespace) -> int:
    for key, value in stack.info().env().items():
        print(f"export {key}={value}")
    return 0


def _logs(stack: Stack, args: argparse.Namespace) -> int:
    files = [str(p) for name, p in stack.log_files().items() if args.service in (None, name)]
    cmd = ["tail", "-n", str(args.lines), *(["-F"] if args.follow else []), *files]
    return subprocess.call(cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cadenza-dev", description="Cadenza's local stack")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start Kafka and Postgres, migrate, create topics").set_defaults(
        fn=_up
    )
    run = sub.add_parser(
        "run", help="up, every service and the demo, one onboarding per branch, until Ctrl-C")
    run.add_argument("--once", action="store_true",
                     help="stop after the demo executions; exit 0 only if all ended as expected")
    run.set_defaults(fn=_run)
    sub.add_parser("down", help="stop Kafka and Postgres").set_defaults(fn=_down)
    sub.add_parser("status", help="say what is running (exit 3 if not all)").set_defaults(
        fn=_status
    )
    sub.add_parser("env", help="print the settings as shell exports").set_defaults(fn=_env)
    logs = sub.add_parser("logs", help="show the servers' logs")
    logs.add_argument("service", nargs="?", choices=["kafka", "postgres"])
    logs.add_argument("-n", "--lines", type=int, default=50)
    logs.add_argument("-f", "--follow", action="store_true")
    logs.set_defaults(fn=_logs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(Stack(), args))
    except MissingPrerequisite as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
