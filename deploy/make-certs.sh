#!/usr/bin/env sh
# A private CA and a Cassandra node certificate for docker-compose.yml (PEM + PKCS12).
set -eu
cd "$(dirname "$0")" && mkdir -p certs secrets && cd certs
openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=statsfeeder CA" -keyout ca.key -out ca.pem
printf 'subjectAltName=DNS:cassandra,DNS:localhost,IP:127.0.0.1\n' > san.ext
openssl req -newkey rsa:2048 -nodes -subj "/CN=cassandra" -keyout server.key -out server.csr
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 -extfile san.ext -out server.pem
openssl pkcs12 -export -in server.pem -inkey server.key -certfile ca.pem -passout pass:changeit -out server.p12
echo "certificates in deploy/certs; now write deploy/secrets/vcenter_password and cassandra_password"
