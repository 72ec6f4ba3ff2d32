"""Devices: registration, inventory, lifecycle."""
