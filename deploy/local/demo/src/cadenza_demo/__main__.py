"""`python -m cadenza_demo --port N [--latency-ms 0-50] [--instant]` serves the demo app.

Environment: `CADENZA_DEMO_LATENCY_MS` (a range like `0-50`, or one number),
`CADENZA_DEMO_INSTANT=1`, `CADENZA_DEMO_KYC_TOKEN` (when set, the KTP endpoint requires
`Authorization: Bearer <token>`).
"""

from __future__ import annotations

import argparse
import os

import uvicorn

from cadenza_demo.app import DemoSettings, create_app


def parse_latency(text: str) -> tuple[float, float]:
    """`"0-50"` → (0, 50); `"20"` → (20, 20); empty → (0, 0)."""
    if not text.strip():
        return 0.0, 0.0
    low, _, high = text.partition("-")
    lo = float(low)
    hi = float(high) if high else lo
    if lo < 0 or hi < lo:
        raise argparse.ArgumentTypeError(f"bad latency range {text!r}")
    return lo, hi


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cadenza_demo", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--latency-ms", type=parse_latency,
                        default=parse_latency(os.environ.get("CADENZA_DEMO_LATENCY_MS", "")),
                        help="random latency per call, e.g. 0-50")
    parser.add_argument("--instant", action="store_true",
                        default=os.environ.get("CADENZA_DEMO_INSTANT", "") in ("1", "true"),
                        help="answer without any latency (benchmarks)")
    parser.add_argument("--kyc-token", default=os.environ.get("CADENZA_DEMO_KYC_TOKEN") or None)
    return parser


def settings_from(args: argparse.Namespace) -> DemoSettings:
    low, high = args.latency_ms
    return DemoSettings(latency_min_ms=low, latency_max_ms=high, instant=args.instant,
                        kyc_token=args.kyc_token)


def run(argv: list[str] | None = None) -> None:
    """Parse the command line and serve until SIGINT/SIGTERM."""
    args = build_parser().parse_args(argv)
    uvicorn.run(create_app(settings_from(args)), host=args.host, port=args.port,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    run()
