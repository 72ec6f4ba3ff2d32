"""GET /metrics: the Prometheus text format, for a key with the read scope."""

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kernex_backend.core.access import ReadAccess
from kernex_backend.core.runtime import RuntimeDep
from kernex_backend.metrics.service import MetricsService

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
async def metrics(runtime: RuntimeDep, _: ReadAccess) -> Response:
    """Every series of this replica (docs/observability.md)."""
    service = runtime.get(MetricsService)
    return Response(generate_latest(service.registry), media_type=CONTENT_TYPE_LATEST)
