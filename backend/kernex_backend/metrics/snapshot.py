"""The figures that come from PostgreSQL and the PKI files, read periodically (never per
scrape: a scrape must not cost a query, and every replica reads the same numbers).

Series derived from the database are the same on every replica: aggregate them with max(),
not sum(), across replicas (the alert rules do)."""

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from cryptography import x509
from sqlalchemy.ext.asyncio import AsyncEngine

from kernex_backend.devices.certificates import Pki


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """One reading; `taken_at` is wall-clock seconds (0: never read yet)."""

    devices: dict[tuple[str, bool], int] = field(default_factory=dict)  # (status, online)
    deployments: dict[str, int] = field(default_factory=dict)  # status
    executions: dict[str, int] = field(default_factory=dict)  # state, unfinished deployments
    deployment_events: dict[str, int] = field(default_factory=dict)  # kind, ever
    certificate_expiry: dict[str, float] = field(default_factory=dict)  # name -> epoch seconds
    taken_at: float = 0.0


_DEVICES = sa.text("SELECT status::text, online, count(*) FROM devices GROUP BY 1, 2")
_DEPLOYMENTS = sa.text("SELECT status::text, count(*) FROM deployments GROUP BY 1")
# Executions of deployments still going: what a rollout is doing now, bounded in cost.
_EXECUTIONS = sa.text(
    "SELECT e.state::text, count(*) FROM deployment_executions e "
    "JOIN deployments d ON d.id = e.deployment_id "
    "WHERE d.status IN ('scheduled', 'running', 'paused') GROUP BY 1"
)
_EVENTS = sa.text("SELECT kind, count(*) FROM deployment_events GROUP BY 1")


def _not_after(path: Path) -> float | None:
    try:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    return certificate.not_valid_after_utc.timestamp()


def _next_update(path: Path) -> float | None:
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except (OSError, ValueError):
        return None
    next_update = crl.next_update_utc
    return next_update.timestamp() if next_update else None


def certificate_expiry(pki: Pki | None) -> dict[str, float]:
    """When the CA, the broker's certificate and the CRL stop being valid (epoch seconds)."""
    if pki is None:
        return {}
    ca = pki.authority.directory
    found = {
        "root_ca": _not_after(ca / "root-ca.crt"),
        "issuing_ca": _not_after(ca / "issuing-ca.crt"),
        "crl_next_update": _next_update(ca / "crl.pem"),
    }
    if pki.broker is not None:
        found["broker"] = _not_after(pki.broker.server_cert)
        found["broker_crl_next_update"] = _next_update(pki.broker.crl)
    return {name: value for name, value in found.items() if value is not None}


async def read(engine: AsyncEngine, pki: Pki | None) -> FleetSnapshot:
    """Take a reading (four grouped counts, a few milliseconds on a 10k-device fleet)."""
    async with engine.connect() as conn:
        devices = {(s, bool(o)): int(n) for s, o, n in await conn.execute(_DEVICES)}
        deployments = {s: int(n) for s, n in await conn.execute(_DEPLOYMENTS)}
        executions = {s: int(n) for s, n in await conn.execute(_EXECUTIONS)}
        events = {k: int(n) for k, n in await conn.execute(_EVENTS)}
    return FleetSnapshot(
        devices=devices,
        deployments=deployments,
        executions=executions,
        deployment_events=events,
        certificate_expiry=certificate_expiry(pki),
        taken_at=time.time(),
    )


def age_s(snapshot: FleetSnapshot, now: dt.datetime | None = None) -> float:
    """How old the reading is (a stuck refresher shows here)."""
    current = (now or dt.datetime.now(dt.UTC)).timestamp()
    return current - snapshot.taken_at if snapshot.taken_at else float("inf")
