#!/usr/bin/env sh
# The first step of deploy/README.md: a private CA and a Cassandra node certificate for
# docker-compose.yml (PEM + PKCS12 keystore), and a random password of its own for each secret
# this stack makes (keystore, Cassandra admin, schema role, statsfeeder role) in
# deploy/secrets/. Existing files are kept: running it again changes nothing.
# deploy/secrets/vcenter_password is yours to write (the vCenter account's password).
set -eu
cd "$(dirname "$0")"
umask 077
mkdir -p certs secrets
for name in cassandra_keystore_password cassandra_admin_password cassandra_schema_password \
            cassandra_password grafana_api_token grafana_admin_password; do
  [ -s "secrets/$name" ] || openssl rand -hex 24 > "secrets/$name"
done
cd certs
if [ ! -s server.p12 ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=statsfeeder CA" \
    -keyout ca.key -out ca.pem
  printf 'subjectAltName=DNS:cassandra,DNS:localhost,IP:127.0.0.1\n' > san.ext
  openssl req -newkey rsa:2048 -nodes -subj "/CN=cassandra" -keyout server.key -out server.csr
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile san.ext -out server.pem
  openssl pkcs12 -export -in server.pem -inkey server.key -certfile ca.pem \
    -passout "file:../secrets/cassandra_keystore_password" -out server.p12
fi
if [ ! -s api.pem ]; then  # the read API's certificate (Grafana reaches https://statsfeeder:9275)
  printf 'subjectAltName=DNS:statsfeeder,DNS:localhost,IP:127.0.0.1\n' > api-san.ext
  openssl req -newkey rsa:2048 -nodes -subj "/CN=statsfeeder" -keyout api.key -out api.csr
  openssl x509 -req -in api.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile api-san.ext -out api.pem
  chmod 640 api.key
fi
# The CA certificate is public. The secrets are read by root (Cassandra's entrypoint, cqlsh)
# and by statsfeeder, which runs as uid 10001 (or any uid) in group 0: group-readable, owner
# and group root when this runs as root, as the bind mounts of compose's secrets keep them.
chmod 644 ca.pem
chmod 640 ../secrets/*
[ "$(id -u)" = 0 ] || echo "Not root: run 'sudo chown root:root deploy/secrets/*' so that" \
  "the statsfeeder container (group 0) can read its secrets."
echo "deploy/certs: CA and node keystore; deploy/secrets: generated passwords."
[ -s ../secrets/vcenter_password ] || echo "Now write deploy/secrets/vcenter_password."
