#!/usr/bin/env bash
# A Docker engine for `make compose-test`, on a machine without systemd:
#   engine.sh start   installs Debian's docker.io, docker-compose and mmdebstrap when missing
#                     (as root), and starts dockerd unless an engine already answers
#   engine.sh stop    stops dockerd only if `start` started it
set -euo pipefail
cd "$(dirname "$0")/../.."
state=.build/dockerd
mkdir -p "$state"

case "${1:-}" in
start)
  missing=()
  for pkg in docker.io docker-compose mmdebstrap; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "engine: missing packages: ${missing[*]} (install them as root)" >&2
      exit 1
    fi
    echo "engine: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if docker info >/dev/null 2>&1; then
    exit 0  # someone else's engine: use it, never stop it
  fi
  echo "engine: starting dockerd (log in $state/dockerd.log)"
  nohup dockerd --pidfile "$state/docker.pid" >"$state/dockerd.log" 2>&1 &
  echo $! >"$state/started-by-us"
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && exit 0
    sleep 0.5
  done
  echo "engine: dockerd did not answer within 30 s:" >&2
  tail -20 "$state/dockerd.log" >&2
  exit 1
  ;;
stop)
  if [ -f "$state/started-by-us" ]; then
    pid=$(cat "$state/started-by-us")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 60); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    rm -f "$state/started-by-us"
    echo "engine: dockerd stopped"
  fi
  ;;
*)
  echo "usage: $0 start|stop" >&2
  exit 2
  ;;
esac
