#!/usr/bin/env bash
# Install (if needed) and start Debian's PostgreSQL, and create the test role and database.
# Idempotent; prints the URL the tests use.
set -euo pipefail

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
fi
version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
if ! pg_lsclusters -h | grep -q "^${version} main"; then
    pg_createcluster "${version}" main >/dev/null
fi
pg_ctlcluster "${version}" main start 2>/dev/null || true
for _ in $(seq 1 50); do
    pg_isready -q -h 127.0.0.1 && break
    sleep 0.2
done
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='buddo'\"" | grep -q 1 \
    || su postgres -c "psql -qc \"CREATE ROLE buddo LOGIN PASSWORD 'buddo' CREATEDB\""
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='buddo_test'\"" | grep -q 1 \
    || su postgres -c "createdb -O buddo buddo_test"
echo "postgresql://buddo:buddo@127.0.0.1:5432/buddo_test"
