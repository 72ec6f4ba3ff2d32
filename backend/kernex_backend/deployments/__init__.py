"""Deployments: which bundle goes to which devices, and how far each device got."""
