"""Telemetry: heartbeats and their time-partitioned store."""
