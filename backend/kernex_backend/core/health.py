"""Liveness and readiness endpoints (no authentication: load balancers and kubelets call them)."""

import asyncio

import sqlalchemy as sa
from fastapi import APIRouter
from pydantic import BaseModel

from kernex_backend import __version__
from kernex_backend.core.errors import ServiceUnavailable
from kernex_backend.core.runtime import RuntimeDep

router = APIRouter(tags=["health"])

_CHECK_TIMEOUT_S = 2.0


class Health(BaseModel):
    """The process is up."""

    status: str
    version: str


class Readiness(BaseModel):
    """Every dependency answered."""

    status: str
    checks: dict[str, str]


@router.get("/health", response_model=Health)
async def health() -> Health:
    """Liveness: the process serves requests. Checks no dependency, so a database outage does not
    get healthy pods restarted."""
    return Health(status="ok", version=__version__)


@router.get("/ready", response_model=Readiness, responses={503: {"description": "not ready"}})
async def ready(runtime: RuntimeDep) -> Readiness:
    """Readiness: the database answers within the timeout, and so does every check the process
    registered (the bundle storage; with the MQTT bridge on, device traffic: the bridge is
    connected, no background task is down, no writer is stuck). `checks` says which failed and
    why."""
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT_S):
            async with runtime.engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
        checks["database"] = "ok"
    except (TimeoutError, OSError, sa.exc.SQLAlchemyError) as exc:
        checks["database"] = type(exc).__name__
    for name, check in runtime.readiness.items():
        try:
            async with asyncio.timeout(_CHECK_TIMEOUT_S):
                problem = await check()
        except Exception as exc:  # a check that fails to answer is itself the answer
            problem = type(exc).__name__
        checks[name] = problem or "ok"
    failing = sorted(name for name, state in checks.items() if state != "ok")
    if failing:
        raise ServiceUnavailable(
            f"not ready: {', '.join(f'{n} ({checks[n]})' for n in failing)}", checks=checks
        )
    return Readiness(status="ok", checks=checks)
