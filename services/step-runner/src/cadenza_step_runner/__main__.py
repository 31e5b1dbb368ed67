"""Entry point of the step-runner service: `python -m cadenza_step_runner`."""

import sys


def run() -> None:
    """Start the service (not built yet)."""
    print("cadenza step-runner: not built yet", file=sys.stderr)
    sys.exit(0)


if __name__ == "__main__":
    run()
