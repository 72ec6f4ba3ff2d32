"""Events out: webhooks an operator subscribes to, delivered from a durable outbox in
PostgreSQL with HMAC signatures, retries with backoff, a delivery log, and automatic disabling
of a target that keeps failing. Domains emit events through outbox.py only."""
