# Cadenza: `make run` brings up the local stack and the services; `make test` runs every check.
UV := python3 -m uv
RUN := $(UV) run --locked --no-sync

.PHONY: deps run up down status lint typecheck unit test schemas bench

deps:
	@bash scripts/bootstrap.sh

run: deps
	$(RUN) python -m cadenza_devstack run

up: deps
	$(RUN) python -m cadenza_devstack up

down:
	$(RUN) python -m cadenza_devstack down

status:
	$(RUN) python -m cadenza_devstack status

lint: deps
	$(RUN) ruff check .

typecheck: deps
	$(RUN) mypy

unit: deps
	$(RUN) pytest -m "not integration and not e2e and not faults"

test: deps
	$(RUN) ruff check .
	$(RUN) mypy
	$(RUN) pytest

schemas: deps
	$(RUN) python -m cadenza_common.schemas

bench: deps
	$(RUN) python -m bench
