# Prometheus from Debian's package, standing in for the official prom/prometheus image where no
# image registry is reachable (this project's CI). Same entrypoint and paths as the official one.
ARG BASE_IMAGE=kernex-debian:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        prometheus >/dev/null \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o prometheus -g prometheus /prometheus
USER prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
