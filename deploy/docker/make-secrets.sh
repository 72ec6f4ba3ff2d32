#!/bin/sh
# Random secrets for docker-compose.yml in ./secrets/ (kept out of git), unless they exist.
# The directory is root-only; the files are readable because compose bind-mounts them into
# containers that run as other users.
set -eu
cd "$(dirname "$0")/../.."
umask 022
install -d -m 0700 secrets
for name in postgres_password s3_access_key s3_secret_key grafana_admin_password; do
  if [ ! -s "secrets/$name" ]; then
    case "$name" in
      s3_access_key) value="kernex-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')" ;;
      *) value=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n') ;;
    esac
    printf '%s' "$value" > "secrets/$name"
    echo "made secrets/$name"
  fi
done
