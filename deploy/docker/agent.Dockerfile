# The Kernex device agent in a container: for devices that run containers, and for test fleets.
# Only the agent's own small dependency set: no backend packages on a device. Built from wheels
# made on the host by deploy/docker/build-images.sh. Run with the device kit at /etc/kernex and
# volumes for the state and the installed applications:
#   docker run -v ./kit:/etc/kernex:ro -v agent-state:/var/lib/kernex-agent \
#     -v agent-apps:/opt/kernex/app kernex-agent
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
COPY .build/wheelhouse /wheels
RUN python3 -m venv /opt/kernex-agent \
    && /opt/kernex-agent/bin/pip install --quiet --no-index --find-links /wheels \
        --no-cache-dir --disable-pip-version-check kernex-agent

FROM ${BASE_IMAGE}
ARG VERSION=0.0.0
ARG COMMIT=unknown
LABEL org.opencontainers.image.title="kernex-agent" \
      org.opencontainers.image.description="Kernex device agent: signed, atomic updates over MQTT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/kernex-agent/bin:$PATH

RUN groupadd --system --gid 10002 kernex-agent \
    && useradd --system --uid 10002 --gid 10002 --create-home --home-dir /home/kernex-agent kernex-agent \
    && install -d -o kernex-agent -g kernex-agent -m 0700 /var/lib/kernex-agent \
    && install -d -o kernex-agent -g kernex-agent -m 0755 /opt/kernex/app
COPY --from=build /opt/kernex-agent /opt/kernex-agent

USER kernex-agent
VOLUME ["/var/lib/kernex-agent", "/opt/kernex/app"]

# Fails when the agent's loop stops marking itself alive (hung, crashed, not started).
HEALTHCHECK --interval=15s --timeout=10s --start-period=20s --retries=3 \
    CMD ["kernex-agent", "--health", "--config", "/etc/kernex/agent.toml"]

ENTRYPOINT ["kernex-agent"]
CMD ["--config", "/etc/kernex/agent.toml"]
