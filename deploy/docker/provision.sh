#!/bin/sh
# One-shot set-up for docker-compose, idempotent: the CA, the broker's certificate and
# configuration, the backend's MQTT identity, its notice-signing key and its HTTPS certificate,
# in the shared volumes, unless they exist already.
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
# The API's HTTPS certificate, from the same CA (clients trust /pki/ca/ca-chain.pem). Replace it
# with one from a public CA, or terminate TLS at a proxy: see docs/operations.md.
if [ ! -f /pki/api/server.crt ]; then
  kernex-provision issue-server --ca "$ca" --out /pki/api --dns backend --dns "${KERNEX_API_HOST:-localhost}"
fi
# Re-rendered every time, so template changes and revocations take effect on restart.
kernex-provision broker-config --ca "$ca" --out "$broker" --port 8883 --bind 0.0.0.0
# The broker image runs as uid 1883; the backend image as uid 10001, which signs CSRs into the
# CA directory, writes the CRL and ACL into the broker volume, and reads its identities.
chown -R 1883:1883 "$broker"
chown -R 10001:10001 "$ca" /pki/service /pki/notice /pki/api
# The backend re-renders the ACL and CRL on revocation: it owns those two files; the broker
# reads them (and needs nothing else writable but its persistence directory).
chown 10001:1883 "$broker/acl" "$broker/crl.pem" && chmod 0644 "$broker/acl" "$broker/crl.pem"
chmod 0775 "$broker" && chgrp 10001 "$broker"
