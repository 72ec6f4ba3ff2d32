"""Audit trail: one event per state-changing operation."""
