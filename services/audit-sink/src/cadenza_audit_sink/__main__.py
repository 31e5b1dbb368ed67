"""Entry point of the audit-sink service: `python -m cadenza_audit_sink`."""

import sys


def run() -> None:
    """Start the service (not built yet)."""
    print("cadenza audit-sink: not built yet", file=sys.stderr)
    sys.exit(0)


if __name__ == "__main__":
    run()
