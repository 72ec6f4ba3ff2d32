#!/usr/bin/env bash
# Prepare this checkout for `make demo` and `make test`: system packages (when root), a virtual
# environment in .venv, and every Python dependency at the versions in constraints.txt.
# Idempotent and quick when nothing changed: a stamp records what was installed.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=.venv
python=${PYTHON:-python3}

apt_packages=(python3 python3-venv python3-dev mosquitto mosquitto-clients openssl ca-certificates prometheus chromium nftables)

missing_apt=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing_apt+=("$pkg")
done
if [ ${#missing_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "bootstrap: installing system packages: ${missing_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # apt and debconf talk on stderr even when all goes well ("delaying package configuration,
    # since apt-utils is not installed"): keep it in a log and show it only on failure.
    apt_log=$(mktemp)
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing_apt[@]}"; } \
      >"$apt_log" 2>&1; then
      cat "$apt_log" >&2
      rm -f "$apt_log"
      echo "bootstrap: installing ${missing_apt[*]} failed (apt's output above)" >&2
      exit 1
    fi
    rm -f "$apt_log"
    # The Debian package starts a system broker on 1883; Kernex runs its own on other ports.
  else
    echo "bootstrap: missing system packages: ${missing_apt[*]}" >&2
    echo "bootstrap: install them (as root: apt-get install ${missing_apt[*]}) and run again" >&2
    exit 1
  fi
fi

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "bootstrap: Python 3.11 or newer is required ($("$python" --version 2>&1))" >&2
  exit 1
fi

stamp=$venv/.kernex-bootstrap
want=$(cat constraints.txt requirements-dev.txt ./*/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  exit 0
fi

# pip's chatter that says nothing to a new user: index locations a machine's pip configuration
# names but does not have, and setuptools' notice about editable installs. Errors still show.
calm() {
  grep -vE "is ignored: it is neither a file nor a directory|BuildBackendWarning|^ *!!$|^ *\*{20,}$|Please be careful with folders|name as your package as they may take|with strategy, WheelFile|^ *$" || true
}

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
echo "bootstrap: installing Python packages into $venv (a minute or two the first time)"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24" 2>&1 | calm
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  -c constraints.txt -r requirements-dev.txt 2>&1 | calm
echo "$want" >"$stamp"
echo "bootstrap: environment ready in $venv"
