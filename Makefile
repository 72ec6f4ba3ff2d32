# Kernex developer entry points. `make demo` and `make test` work on a fresh Debian machine:
# both bootstrap what they need first.

VENV := .venv
BIN := $(VENV)/bin
PACKAGES := protocol/kernex_protocol backend/kernex_backend provisioning/kernex_provision device-agent/kernex_agent simulator/kernex_sim devstack/kernex_devstack cli/kernex_cli

.PHONY: bootstrap demo test compose-test dashboards check audit lint format

bootstrap:
	@./scripts/bootstrap.sh

demo: bootstrap
	$(BIN)/python -m kernex_devstack.demo

test: bootstrap
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The compose stack for real: a Docker engine (started if none runs), images built from wheels,
# docker-compose.yml up with deploy/docker/compose.local.yml, checked, and taken down.
compose-test: bootstrap
	KERNEX_COMPOSE_TEST=1 $(BIN)/python -m pytest tests/compose -p no:cacheprovider $(PYTEST_ARGS)

# Regenerate the Grafana dashboards from deploy/grafana/kernex_dashboards.py (commit the JSON).
dashboards: bootstrap
	$(BIN)/python deploy/grafana/kernex_dashboards.py

check: bootstrap
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy $(PACKAGES) tests migrations/env.py
	$(BIN)/lint-imports --no-cache --no-logo

# Known vulnerabilities in the pinned Python packages (pip-audit; needs the advisory source,
# which a package mirror may not serve: see docs/security.md, "Supply chain").
audit:
	@./deploy/tools/audit.sh

format: bootstrap
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
