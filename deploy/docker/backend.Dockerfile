# The Kernex backend image: API server, migrations, and the kernex-provision / kernex-release
# tools. Build from the repository root:
#   docker build -f deploy/docker/backend.Dockerfile -t kernex-backend .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --system --uid 10001 --create-home --home-dir /home/kernex kernex

WORKDIR /app
COPY constraints.txt ./
COPY protocol/ protocol/
COPY provisioning/ provisioning/
COPY backend/ backend/
RUN pip install -c constraints.txt ./protocol ./provisioning ./backend
COPY migrations/ migrations/
COPY broker-config/ broker-config/
COPY deploy/docker/provision.sh deploy/provision.sh

ENV KERNEX_MIGRATIONS_DIR=/app/migrations \
    KERNEX_BROKER_TEMPLATES_DIR=/app/broker-config \
    KERNEX_API__HOST=0.0.0.0 \
    KERNEX_API__PORT=8000

USER kernex
EXPOSE 8000

# Liveness only (no dependency checks): exits non-zero unless /api/v1/health answers 200.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:8000/api/v1/health', timeout=2); sys.exit(0 if r.status == 200 else 1)"]

CMD ["kernex-backend", "serve"]
