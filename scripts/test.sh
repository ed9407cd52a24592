#!/usr/bin/env bash
# Runs Warren's whole test suite on a fresh machine: installs what the tests need, then
# runs every test of the workspace and prints the runner's summary line.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# The dashboard's browser tests drive headless Chromium through chromedriver.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "== installing ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "note: ${need_apt[*]} missing and not root: the network-namespace and browser tests will skip"
  fi
fi

# The ledger tests also run against PostgreSQL when WARREN_TEST_POSTGRES names a database.
# WARREN_TEST_POSTGRES=local sets one up: Debian's postgresql (installed if missing, as
# root), its main cluster started on 127.0.0.1, a fresh database warren_test.
if [ "${WARREN_TEST_POSTGRES:-}" = local ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "error: WARREN_TEST_POSTGRES=local needs root (it installs and starts postgresql)" >&2
    exit 1
  fi
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "== installing postgresql"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  pg_version="$(ls /usr/lib/postgresql | sort -n | tail -1)"
  pg_lsclusters -h | grep -q "^$pg_version main" || pg_createcluster "$pg_version" main >/dev/null
  pg_ctlcluster "$pg_version" main start 2>/dev/null || true
  su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'warren-test'\"" >/dev/null
  su postgres -c "dropdb --if-exists warren_test && createdb warren_test"
  export WARREN_TEST_POSTGRES="postgres://postgres:warren-test@127.0.0.1:5432/warren_test"
  echo "== PostgreSQL ledger tests against the local cluster ($pg_version)"
fi

echo "== building"
cargo build --workspace --all-targets --locked

echo "== testing"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast --failure-output final
else
  cargo test --workspace --locked --no-fail-fast
fi
