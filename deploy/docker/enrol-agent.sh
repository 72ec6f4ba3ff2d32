#!/bin/sh
# One-shot for docker-compose: enrol the sample device agent through the API, as a factory
# line would (its key is made here and never leaves the kit volume), unless its kit exists.
# The API key it uses lives only for this run.
set -eu
kit=/kit
device_id=${KERNEX_AGENT_DEVICE_ID:?set KERNEX_AGENT_DEVICE_ID}
if [ -f "$kit/agent.toml" ]; then
  echo "enrol-agent: $device_id already has a kit"
  exit 0
fi
token_file=$(mktemp)
trap 'rm -f "$token_file"; kernex-backend revoke-api-key --name compose-enrol >/dev/null || true' EXIT
kernex-backend create-api-key --name compose-enrol --scope write --replace > "$token_file"
kernex-provision enrol "$device_id" --api https://backend:8000/api/v1 \
  --api-ca-file /pki/ca/ca-chain.pem --token-file "$token_file" \
  --device-type "${KERNEX_AGENT_DEVICE_TYPE:-container}" --out "$kit" \
  --broker-host mosquitto --notice-keys /pki/ca/notice-keys --release-keys /release-keys
chown -R 10002:10002 "$kit"
