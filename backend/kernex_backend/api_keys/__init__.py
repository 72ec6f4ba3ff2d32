"""API keys: operator credentials with scopes."""
