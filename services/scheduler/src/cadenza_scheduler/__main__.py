"""Entry point of the scheduler service: `python -m cadenza_scheduler`."""

import sys


def run() -> None:
    """Start the service (not built yet)."""
    print("cadenza scheduler: not built yet", file=sys.stderr)
    sys.exit(0)


if __name__ == "__main__":
    run()
