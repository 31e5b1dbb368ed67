"""Entry point: `python -m cadenza_devstack up|down|status|logs|env`."""

import sys

from cadenza_devstack.cli import main


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
