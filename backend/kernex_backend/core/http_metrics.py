"""Request latency for Prometheus, by route template (never the raw path: IDs in paths would
make a series per device) and status class."""

from prometheus_client import CollectorRegistry, Histogram
from starlette.types import Scope

# From a fast cached read to a slow upload; the API's own requests rarely exceed a second.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def route_template(scope: Scope) -> str:
    """The matched route's template with the prefixes it was included under: FastAPI keeps the
    route object from before inclusion, whose path lacks them, so the prefix is taken from the
    request path's leading segments (static ones: path parameters never hold a slash)."""
    path = getattr(scope.get("route"), "path", None)
    if not path:
        return "unmatched"
    own = path.strip("/").split("/")
    actual = scope["path"].strip("/").split("/")
    prefix = actual[: max(0, len(actual) - len(own))]
    return "/" + "/".join([*prefix, *own]) if prefix else path


class RequestLatency:
    """The latency histogram; RequestContextMiddleware reports each finished request here."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.histogram = Histogram(
            "kernex_http_request_duration_seconds",
            "API request duration by route template, method and status class.",
            ["route", "method", "status_class"],
            registry=registry,
            buckets=BUCKETS,
        )

    def observe(self, scope: Scope, status: int, seconds: float) -> None:
        """Record one finished request."""
        self.histogram.labels(route_template(scope), scope["method"], f"{status // 100}xx").observe(
            seconds
        )
