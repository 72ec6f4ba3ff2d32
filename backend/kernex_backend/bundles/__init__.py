"""Bundles: signed update artefacts and their storage."""
