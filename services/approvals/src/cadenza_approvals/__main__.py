"""Entry point of the approvals service: `python -m cadenza_approvals`."""

import sys


def run() -> None:
    """Start the service (not built yet)."""
    print("cadenza approvals: not built yet", file=sys.stderr)
    sys.exit(0)


if __name__ == "__main__":
    run()
