"""Prometheus metrics: what the fleet, the bridge, rollouts, the API and the PKI are doing.
Every series is listed, with what to do about it, in docs/observability.md."""
