#!/usr/bin/env bash
# Audit every pinned Python package (constraints.txt) against the Python advisory database with
# pip-audit, installed into a virtual environment of its own under .build/tools (pinned by
# audit-constraints.txt). `--strict`: a package the advisory source cannot answer for fails the
# audit instead of being skipped, so "no known vulnerabilities" is never said about packages
# nobody looked up. Needs the package index's JSON API (or, with `-s osv`, the OSV service);
# behind a mirror without it, every package fails as "not found" (docs/security.md).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
venv=$root/.build/tools/audit
version=2.10.1

# shellcheck source=deploy/tools/pinned-venv.sh
. "$root/deploy/tools/pinned-venv.sh"
install_pinned_tool "$venv" pip-audit "$version" "$root/deploy/tools/audit-constraints.txt"
exec "$venv/bin/pip-audit" --requirement "$root/constraints.txt" --no-deps --disable-pip \
  --strict --progress-spinner off "$@"
