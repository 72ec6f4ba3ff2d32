# The Kernex broker: Debian's Mosquitto 2.0, run by `kernex-provision broker-run`, which reloads
# it within a second of a revocation (the backend writes the CRL and ACL into the shared broker
# volume; see docs/security.md). The configuration is rendered into /broker by the provision job.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
COPY .build/wheelhouse /wheels
RUN python3 -m venv /opt/kernex \
    && /opt/kernex/bin/pip install --quiet --no-index --find-links /wheels \
        --no-cache-dir --disable-pip-version-check kernex-provision

FROM ${BASE_IMAGE}
ARG VERSION=0.0.0
ARG COMMIT=unknown
LABEL org.opencontainers.image.title="kernex-broker" \
      org.opencontainers.image.description="Mosquitto with the Kernex mTLS configuration and revocation reloads" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}" \
      org.opencontainers.image.licenses="Apache-2.0"

# The oldest Debian build of Mosquitto with every security fix docs/security.md lists ("Supply
# chain"): the build fails rather than ship an older one.
ARG MOSQUITTO_MIN_VERSION=2.0.11-1.2+deb12u2
# uid 1883 as in the upstream Mosquitto image, so volumes move between the two.
RUN groupadd --system --gid 1883 mosquitto \
    && useradd --system --uid 1883 --gid 1883 --home-dir /var/lib/mosquitto mosquitto \
    && apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        mosquitto >/dev/null \
    && installed=$(dpkg-query -W -f '${Version}' mosquitto) \
    && if ! dpkg --compare-versions "$installed" ge "$MOSQUITTO_MIN_VERSION"; then \
        echo "mosquitto $installed is older than $MOSQUITTO_MIN_VERSION" >&2; exit 1; fi \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/kernex /opt/kernex
ENV PATH=/opt/kernex/bin:$PATH PYTHONUNBUFFERED=1

USER mosquitto
EXPOSE 8883
# Healthy when something listens on 8883 (0x22B3), read from the kernel's socket table: a TCP
# probe would fail the mTLS handshake and fill the broker's log with errors every few seconds.
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=5 \
    CMD ["grep", "-qE", ":22B3 [0-9A-F]+:0000 0A", "/proc/net/tcp", "/proc/net/tcp6"]
CMD ["kernex-provision", "broker-run", "--broker-dir", "/broker", "--mosquitto", "/usr/sbin/mosquitto"]
