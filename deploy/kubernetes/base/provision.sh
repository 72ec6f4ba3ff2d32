#!/bin/sh
# The Kubernetes provision Job, idempotent: on the shared PKI volume, the issuing CA, the
# broker's certificate and configuration, one MQTT identity per bridge worker (named after its
# pod, kernex-bridge-0 ... kernex-bridge-N-1) and the notice-signing key, unless they exist.
# Runs as the backend's uid (10001); the broker pod reads its files through group 10001.
# Scaling the bridge past KERNEX_BRIDGE_IDENTITIES: raise it and run this Job again; the
# re-rendered ACL grants the new identities and the broker reloads it within a second.
set -eu
umask 027
pki=${KERNEX_PKI_DIR:-/pki}  # the tests run it on a folder of their own
ca=$pki/ca
broker=$pki/broker
if [ ! -f "$ca/issuing-ca.key" ]; then
  kernex-provision init-ca --ca "$ca" --organization "${KERNEX_ORGANIZATION:-Kernex}"
fi
if [ ! -f "$broker/server.crt" ]; then
  kernex-provision issue-server --ca "$ca" --out "$broker" \
    --dns kernex-broker --dns "kernex-broker.${KERNEX_NAMESPACE}.svc" --dns "$KERNEX_BROKER_HOST"
fi
i=0
while [ "$i" -lt "${KERNEX_BRIDGE_IDENTITIES:-4}" ]; do
  name="kernex-bridge-$i"
  if [ ! -f "$pki/services/$name/service.crt" ]; then
    kernex-provision issue-service --ca "$ca" --out "$pki/services/$name" "$name"
  fi
  i=$((i + 1))
done
if [ ! -f "$pki/notice/notice.key" ]; then
  kernex-provision notice-key --ca "$ca" --out "$pki/notice"
fi
# Re-rendered every run, so template changes and new identities take effect.
kernex-provision broker-config --ca "$ca" --out "$broker" --port "${KERNEX_BROKER_PORT:-8883}" \
  --bind "${KERNEX_BROKER_BIND:-0.0.0.0}"
# Mosquitto (uid 1883, group 10001) reads its key and config through the group; the backend
# rewrites the CRL and ACL in place on every revocation.
chmod 0750 "$broker" && chmod 0640 "$broker/server.key"
chmod 0664 "$broker/acl" "$broker/crl.pem"
chmod 0770 "$broker/data"
echo "provisioned: CA, broker, ${KERNEX_BRIDGE_IDENTITIES:-4} bridge identities, notice key"
