#!/usr/bin/env bash
# Build the Kernex images (backend, agent, broker) from wheels made on this host: the images
# install with --no-index, so a build needs no network and gives the same result in every CI.
#   KERNEX_BASE_IMAGE   base for all three (default: the official python:3.11-slim-bookworm;
#                       `make compose-test` passes a Debian base made with mmdebstrap)
#   PYTHON              the Python that builds the wheels (default: .venv/bin/python)
# Tags: kernex-<image>:<version> and kernex-<image>:<commit>.
set -euo pipefail
cd "$(dirname "$0")/../.."
base=${KERNEX_BASE_IMAGE:-python:3.11-slim-bookworm}
python=${PYTHON:-.venv/bin/python}
version=$("$python" -c 'import tomllib; print(tomllib.load(open("backend/pyproject.toml", "rb"))["project"]["version"])')
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)

echo "images: wheels for protocol, provisioning, backend and agent"
rm -rf .build/wheelhouse
mkdir -p .build/wheelhouse
# Only pip's notices about index locations a machine's configuration names but lacks are
# dropped; errors still show and still fail the build.
"$python" -m pip wheel --quiet --disable-pip-version-check -c constraints.txt \
  --wheel-dir .build/wheelhouse ./protocol ./provisioning ./backend ./device-agent 2>&1 \
  | { grep -v "is ignored: it is neither a file nor a directory" || true; }
# The S3 stand-in for tests (deploy/docker/local/seaweedfs.Dockerfile) takes the host's binary.
if [ -x "$(dirname "$python")/weed" ]; then
  cp -u "$(dirname "$python")/weed" .build/weed
fi

for image in backend agent broker; do
  echo "images: kernex-$image:$version ($commit) on $base"
  # The build's own output is kept in a log and shown only when it fails.
  log=.build/$image-build.log
  if ! docker build --build-arg "BASE_IMAGE=$base" --build-arg "VERSION=$version" \
    --build-arg "COMMIT=$commit" -f "deploy/docker/$image.Dockerfile" \
    -t "kernex-$image:$version" -t "kernex-$image:$commit" . >"$log" 2>&1; then
    cat "$log" >&2
    echo "images: building kernex-$image failed" >&2
    exit 1
  fi
done
echo "images: built kernex-backend, kernex-agent and kernex-broker $version"
