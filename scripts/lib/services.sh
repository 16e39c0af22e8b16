# Local services for the test suite: PostgreSQL on 127.0.0.1:5432 (database
# `test`), Redis on 127.0.0.1:6379, Chromium with chromedriver for the
# dashboard's browser tests, and nginx and Python 3 as the real upstreams of
# the canonical-path tests (each test starts its own on free ports). Each is started if it is installed but
# not running, and installed with apt-get where that is possible.
# KEYGATE_REQUIRE_SERVICES=1 (set by CI) turns a missing service into a failure.

log() { printf 'services: %s\n' "$*" >&2; }

can_install() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

apt_install() {
  if [ -z "${KEYGATE_APT_UPDATED:-}" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    export KEYGATE_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

postgres_up() { command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432; }
redis_up() { command -v redis-cli >/dev/null 2>&1 && [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]; }

wait_for() {
  local check=$1
  for _ in $(seq 1 50); do "$check" && return 0; sleep 0.2; done
  return 1
}

ensure_postgres() {
  postgres_up && return 0
  if ! command -v pg_ctlcluster >/dev/null 2>&1 && can_install; then
    log "installing PostgreSQL"
    apt_install postgresql
  fi
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    log "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start >/dev/null 2>&1 || true
    wait_for postgres_up || return 1
    if [ "$(id -u)" = 0 ] && command -v runuser >/dev/null 2>&1; then
      runuser -u postgres -- psql -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" 2>/dev/null | grep -q 1 ||
        runuser -u postgres -- createdb test 2>/dev/null || true
    fi
    return 0
  fi
  return 1
}

ensure_redis() {
  redis_up && return 0
  if ! command -v redis-server >/dev/null 2>&1 && can_install; then
    log "installing Redis"
    apt_install redis-server
  fi
  if command -v redis-server >/dev/null 2>&1; then
    log "starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
    wait_for redis_up && return 0
  fi
  return 1
}

browser_ready() { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }

# The dashboard's browser tests drive Debian's Chromium through chromedriver.
ensure_browser() {
  browser_ready && return 0
  if can_install; then
    log "installing chromium and chromium-driver"
    apt_install chromium chromium-driver || true
  fi
  browser_ready
}

nginx_ready() { command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; }

# Installed, never started here: the tests start nginx with their own config.
ensure_nginx() {
  nginx_ready && return 0
  if can_install; then
    log "installing nginx-light"
    apt_install nginx-light || true
  fi
  nginx_ready
}

ensure_python() {
  command -v python3 >/dev/null 2>&1 && return 0
  can_install && { log "installing python3"; apt_install python3 || true; }
  command -v python3 >/dev/null 2>&1
}

# The Standard Webhooks reference library (PyPI `standardwebhooks`), which
# the webhook tests verify keygate's signatures with, in a virtual
# environment of its own under target/ (made once, reused by later runs).
STANDARD_WEBHOOKS_VERSION=1.3.0
ensure_standard_webhooks() {
  local venv="${KEYGATE_TEST_VENV:-$PWD/target/test-venv}"
  local python="$venv/bin/python"
  if ! "$python" -c "import standardwebhooks" >/dev/null 2>&1; then
    log "installing standardwebhooks $STANDARD_WEBHOOKS_VERSION into $venv"
    if ! python3 -m venv "$venv" >/dev/null 2>&1 && can_install; then
      apt_install python3-venv || true
      python3 -m venv "$venv" >/dev/null 2>&1 || return 1
    fi
    "$venv/bin/pip" install -q --disable-pip-version-check "standardwebhooks==$STANDARD_WEBHOOKS_VERSION" >/dev/null 2>&1 || return 1
  fi
  export KEYGATE_TEST_WEBHOOK_PYTHON="$python"
}

# schemathesis (PyPI), which checks the admin API against its OpenAPI
# document (crates/keygate-server/tests/it/openapi.rs), in the same
# virtual environment.
SCHEMATHESIS_VERSION=4.32.5
ensure_schemathesis() {
  local venv="${KEYGATE_TEST_VENV:-$PWD/target/test-venv}"
  if ! "$venv/bin/st" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    log "installing schemathesis $SCHEMATHESIS_VERSION into $venv"
    [ -x "$venv/bin/pip" ] || return 1
    "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" >/dev/null 2>&1 || return 1
  fi
  export KEYGATE_TEST_SCHEMATHESIS="$venv/bin/st"
}

# openapi-python-client (PyPI), which generates a Python client from the
# admin API's document for crates/keygate-server/tests/it/generated_client.rs,
# in the same virtual environment (its httpx and attrs run the client).
OPENAPI_PYTHON_CLIENT_VERSION=0.29.1
ensure_openapi_python_client() {
  local venv="${KEYGATE_TEST_VENV:-$PWD/target/test-venv}"
  if ! "$venv/bin/openapi-python-client" --version 2>/dev/null | grep -q "$OPENAPI_PYTHON_CLIENT_VERSION"; then
    log "installing openapi-python-client $OPENAPI_PYTHON_CLIENT_VERSION into $venv"
    [ -x "$venv/bin/pip" ] || return 1
    "$venv/bin/pip" install -q --disable-pip-version-check "openapi-python-client==$OPENAPI_PYTHON_CLIENT_VERSION" >/dev/null 2>&1 || return 1
  fi
  export KEYGATE_TEST_OPENAPI_PYTHON_CLIENT="$venv/bin/openapi-python-client"
}

ensure_services() {
  local missing=()
  ensure_postgres || missing+=("PostgreSQL on 127.0.0.1:5432")
  ensure_redis || missing+=("Redis on 127.0.0.1:6379")
  ensure_browser || missing+=("chromium + chromedriver")
  ensure_nginx || missing+=("nginx")
  ensure_python || missing+=("python3")
  ensure_standard_webhooks || missing+=("the standardwebhooks Python library")
  ensure_schemathesis || missing+=("schemathesis")
  ensure_openapi_python_client || missing+=("openapi-python-client")
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "${KEYGATE_REQUIRE_SERVICES:-0}" = 1 ]; then
      log "missing: ${missing[*]} (KEYGATE_REQUIRE_SERVICES=1 forbids skipping)"
      return 1
    fi
    log "missing: ${missing[*]}; tests that need them will say so"
  fi
  return 0
}
