#!/bin/sh
# One-shot set-up for docker-compose: create the CA, the broker's certificate and configuration,
# and the backend's MQTT identity in the shared volumes, unless they exist already.
set -eu
ca=/pki/ca
broker=/broker
if [ ! -f "$ca/issuing-ca.key" ]; then
  kernex-provision init-ca --ca "$ca" --organization "${KERNEX_ORGANIZATION:-Kernex}"
fi
if [ ! -f "$broker/server.crt" ]; then
  kernex-provision issue-server --ca "$ca" --out "$broker" --dns mosquitto --dns "${KERNEX_BROKER_HOST:-localhost}"
fi
if [ ! -f /pki/service/service.crt ]; then
  kernex-provision issue-service --ca "$ca" --out /pki/service
fi
# The backend's notice-signing key; its public part goes into every device kit made after.
if [ ! -f /pki/notice/notice.key ]; then
  kernex-provision notice-key --ca "$ca" --out /pki/notice
fi
# Re-rendered every time, so template changes and revocations take effect on restart.
kernex-provision broker-config --ca "$ca" --out "$broker" --port 8883 --bind 0.0.0.0
# The eclipse-mosquitto image runs as uid 1883; the backend image as uid 10001, which signs
# CSRs into the CA directory and reads its MQTT identity.
chown -R 1883:1883 "$broker" 2>/dev/null || true
chown -R 10001:10001 "$ca" /pki/service 2>/dev/null || true
