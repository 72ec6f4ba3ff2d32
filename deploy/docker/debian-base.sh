#!/usr/bin/env bash
# A Debian 12 base image with Python, made from Debian's packages (mmdebstrap) and imported
# into Docker, for machines that reach Debian's archive but no container registry. Uses this
# host's APT sources. Idempotent: does nothing when the image exists.
#   deploy/docker/debian-base.sh [IMAGE]     (default: kernex-debian:bookworm)
set -euo pipefail
image=${1:-kernex-debian:bookworm}
if docker image inspect "$image" >/dev/null 2>&1; then
  exit 0
fi
sources=/etc/apt/sources.list.d/debian.sources
[ -f "$sources" ] || sources=/etc/apt/sources.list
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "images: making the Debian base $image with mmdebstrap (about 30 s)"
mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$work/base.tar" "$sources"
docker import --change 'CMD ["/bin/bash"]' "$work/base.tar" "$image" >/dev/null
