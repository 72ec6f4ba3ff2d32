"""Kernex backend: operator REST API, fleet state and rollouts."""

__version__ = "0.1.0"
