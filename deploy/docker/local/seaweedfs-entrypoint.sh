#!/bin/sh
# SeaweedFS master, volume, filer and S3 gateway in one process, with MinIO's credentials.
set -eu
read_secret() {  # $1: variable name; its _FILE variant wins
  eval "file=\${$1_FILE:-}"
  if [ -n "$file" ]; then cat "$file"; else eval "printf '%s' \"\${$1:?set $1 or $1_FILE}\""; fi
}
access=$(read_secret MINIO_ROOT_USER)
secret=$(read_secret MINIO_ROOT_PASSWORD)
config=/data/s3.json
umask 077
printf '{"identities":[{"name":"kernex","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","Write","List","Tagging"]}]}' \
  "$access" "$secret" > "$config"
exec weed server -dir=/data -ip=127.0.0.1 -ip.bind=0.0.0.0 -master.volumeSizeLimitMB=256 \
  -volume.max=100 -s3 -s3.port=9000 -s3.port.iceberg=0 -s3.port.lance=0 -s3.config="$config"
