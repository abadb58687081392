#!/usr/bin/env bash
# Cassandra roles for statsfeeder, with no shared default secret. docker-compose.yml runs it
# in its cassandra-roles and cassandra-grants services; by hand, see deploy/README.md.
#
#   cassandra-setup.sh roles   as the admin role: the schema role (may create keyspaces, and so
#                              owns the one `statsfeeder schema create` makes) and the service
#                              role (no rights yet). On a new cluster the admin is first created
#                              from the well-known cassandra/cassandra, and that default
#                              superuser is then disabled.
#   cassandra-setup.sh grants  the service role gets SELECT and MODIFY on the keyspace (its
#                              tables; lightweight transactions on `leases` need both), nothing
#                              else. Run after `statsfeeder schema create`.
#
# Passwords are read from files (SECRETS_DIR, default /run/secrets): cassandra_admin_password,
# cassandra_schema_password, cassandra_password (the service's). Running it again is harmless
# and applies a changed password. Settings, with their defaults:
#   CASSANDRA_HOST=cassandra CASSANDRA_PORT=9042 CASSANDRA_CA_FILE=/deploy/ca.pem
#   ADMIN_ROLE=admin SCHEMA_ROLE=statsfeeder_schema SERVICE_ROLE=statsfeeder
#   KEYSPACE=vcloud_metrics (as in the config's cassandra.keyspace) CQLSH=cqlsh
set -euo pipefail

phase=${1:-}
host=${CASSANDRA_HOST:-cassandra}
port=${CASSANDRA_PORT:-9042}
ca=${CASSANDRA_CA_FILE:-/deploy/ca.pem}
secrets=${SECRETS_DIR:-/run/secrets}
admin=${ADMIN_ROLE:-admin}
schema_role=${SCHEMA_ROLE:-statsfeeder_schema}
service_role=${SERVICE_ROLE:-statsfeeder}
keyspace=${KEYSPACE:-vcloud_metrics}
cqlsh=${CQLSH:-cqlsh}

fail() { echo "cassandra-setup: $*" >&2; exit 1; }
case "$phase" in roles|grants) ;; *) fail "usage: cassandra-setup.sh roles|grants" ;; esac
for name in "$admin" "$schema_role" "$service_role" "$keyspace"; do
  [[ "$name" =~ ^[a-z][a-z0-9_]{0,47}$ ]] || fail "'$name' is not a plain lower-case CQL name"
done

secret() {  # the password in a secret file; never printed
  local file="$secrets/$1" value
  [ -r "$file" ] || fail "cannot read the secret file $file"
  value=$(head -n 1 "$file" | tr -d '\r\n')
  [ -n "$value" ] || fail "the secret file $file is empty"
  [[ "$value" != *%* ]] || fail "the secret in $file contains '%', which cqlshrc cannot hold"
  printf '%s' "$value"
}
q() { printf '%s' "${1//\'/\'\'}"; }  # a CQL string literal's content

rc=$(mktemp)
trap 'rm -f "$rc"' EXIT
chmod 600 "$rc"
cql() {  # user, password, statements: credentials through a private cqlshrc, not the argv
  printf '[authentication]\nusername = %s\npassword = %s\n[connection]\nhostname = %s\n' \
    "$1" "$2" "$host" > "$rc"
  printf 'port = %s\n[ssl]\ncertfile = %s\nvalidate = true\n' "$port" "$ca" >> "$rc"
  "$cqlsh" --cqlshrc "$rc" --ssl -e "$3"
}

admin_pw=$(secret cassandra_admin_password)
login() { cql "$1" "$2" "SELECT release_version FROM system.local" 2>&1 >/dev/null; }
# A node answers nodetool before it accepts logins, and creates its default superuser a few
# seconds after that: try for up to a minute.
for attempt in $(seq 1 30); do
  probe=$(login "$admin" "$admin_pw") && break
  if [ "$admin" != cassandra ] && login cassandra cassandra >/dev/null; then
    # A new cluster: the only login is the default superuser, whose password everyone knows.
    cql cassandra cassandra "CREATE ROLE IF NOT EXISTS $admin WITH SUPERUSER = true
      AND LOGIN = true AND PASSWORD = '$(q "$admin_pw")'" >/dev/null
    cql "$admin" "$admin_pw" "ALTER ROLE cassandra WITH SUPERUSER = false AND LOGIN = false" \
      >/dev/null
    echo "cassandra-setup: created the admin role $admin; the default cassandra login is disabled"
    break
  fi
  [ "$attempt" -lt 30 ] \
    || fail "$admin cannot log in at $host:$port: $(tail -n 1 <<<"$probe")"
  sleep 2
done

if [ "$phase" = roles ]; then
  schema_pw=$(secret cassandra_schema_password)
  service_pw=$(secret cassandra_password)
  cql "$admin" "$admin_pw" "
    CREATE ROLE IF NOT EXISTS $schema_role WITH LOGIN = true AND PASSWORD = '$(q "$schema_pw")';
    ALTER ROLE $schema_role WITH PASSWORD = '$(q "$schema_pw")';
    GRANT CREATE ON ALL KEYSPACES TO $schema_role;
    CREATE ROLE IF NOT EXISTS $service_role WITH LOGIN = true AND PASSWORD = '$(q "$service_pw")';
    ALTER ROLE $service_role WITH PASSWORD = '$(q "$service_pw")';" >/dev/null
  echo "cassandra-setup: roles $schema_role (schema) and $service_role (service) ready"
else
  cql "$admin" "$admin_pw" "
    GRANT SELECT ON KEYSPACE $keyspace TO $service_role;
    GRANT MODIFY ON KEYSPACE $keyspace TO $service_role;" >/dev/null \
    || fail "could not grant on keyspace $keyspace: run 'statsfeeder schema create' first"
  echo "cassandra-setup: $service_role may read and write the tables of $keyspace, nothing else"
fi
