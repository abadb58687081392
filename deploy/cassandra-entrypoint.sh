#!/bin/sh
# docker-compose.yml's Cassandra: Cassandra 3.11 reads its keystore password only from
# cassandra.yaml, so the yaml is rendered here from deploy/cassandra.yaml with the password in
# the cassandra_keystore_password secret (nothing shared in the repository), and the keystore
# copied beside it; then the image's own entrypoint runs (it edits the yaml and hands the
# files to the cassandra user).
set -eu
password=$(head -n 1 /run/secrets/cassandra_keystore_password | tr -d '\r\n')
case "$password" in
  ''|*[!A-Za-z0-9_-]*) echo "cassandra-entrypoint: cassandra_keystore_password must be" \
                            "letters, digits, '-' or '_' (deploy/make-certs.sh makes one)" >&2
                       exit 1 ;;
esac
conf=${CASSANDRA_CONFIG:-/etc/cassandra}
sed "s/@KEYSTORE_PASSWORD@/$password/" /deploy/cassandra.yaml > "$conf/cassandra.yaml"
cp /deploy/server.p12 "$conf/server.p12"
exec docker-entrypoint.sh "$@"
