"""Entry point of the trigger-api service: `python -m cadenza_trigger_api`."""

import sys


def run() -> None:
    """Start the service (not built yet)."""
    print("cadenza trigger-api: not built yet", file=sys.stderr)
    sys.exit(0)


if __name__ == "__main__":
    run()
