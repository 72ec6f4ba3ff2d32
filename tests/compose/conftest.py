"""The compose test needs a Docker engine and builds images: `make compose-test` runs it (with
KERNEX_COMPOSE_TEST=1); `make test` leaves this folder out (tests/conftest.py)."""
