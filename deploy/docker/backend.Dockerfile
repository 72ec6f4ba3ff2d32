# The Kernex backend image: API server, MQTT worker, migrations, and the kernex-provision and
# kernex-release tools. Installs only wheels built on the host (deploy/docker/build-images.sh
# makes them into .build/wheelhouse): no network access while building, the same in every CI.
#   deploy/docker/build-images.sh                      # official python base
#   KERNEX_BASE_IMAGE=kernex-debian:bookworm deploy/docker/build-images.sh
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
COPY .build/wheelhouse /wheels
RUN python3 -m venv /opt/kernex \
    && /opt/kernex/bin/pip install --quiet --no-index --find-links /wheels \
        --no-cache-dir --disable-pip-version-check kernex-backend kernex-provision

FROM ${BASE_IMAGE}
ARG VERSION=0.0.0
ARG COMMIT=unknown
LABEL org.opencontainers.image.title="kernex-backend" \
      org.opencontainers.image.description="Kernex fleet backend: API, MQTT bridge, rollouts" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/kernex/bin:$PATH \
    KERNEX_MIGRATIONS_DIR=/app/migrations \
    KERNEX_BROKER_TEMPLATES_DIR=/app/broker-config \
    KERNEX_API__HOST=0.0.0.0 \
    KERNEX_API__PORT=8000

RUN groupadd --system --gid 10001 kernex \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/kernex kernex
COPY --from=build /opt/kernex /opt/kernex
COPY migrations/ /app/migrations/
COPY broker-config/ /app/broker-config/
COPY deploy/docker/provision.sh deploy/docker/enrol-agent.sh /app/deploy/

USER kernex
WORKDIR /home/kernex
EXPOSE 8000

# Liveness only (no dependency checks): fails unless the local API answers 200 on /health.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["kernex-backend", "probe"]

CMD ["kernex-backend", "serve"]
