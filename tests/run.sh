#!/usr/bin/env bash
# The test command from the README: lint, then the whole suite (unit, real server and worker,
# notebooks under nbval, and the JupyterLab browser test) on the project's virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
# Debian packages the tests drive for real: chromium (the JupyterLab browser test; playwright cannot
# download its own browser here), postgresql and mariadb-server (the ratings store on other databases),
# redis-server (Redis 7 with TLS: the rediss:// and multi-host tests; the embedded Valkey has no TLS),
# docker-compose (validates deploy/compose.yaml; no container engine runs here).
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v mariadb-install-db >/dev/null 2>&1 || missing+=(mariadb-server)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} for the tests (apt-get)..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) \
      || echo "could not install ${missing[*]}: the tests that need them will fail or skip and say so"
  else
    echo "not installed: ${missing[*]}; run 'sudo apt-get install -y ${missing[*]}' (some tests need them)"
  fi
fi
$PY -m ruff check mediaq tests benchmarks
$PY -m pytest -p no:cacheprovider tests notebooks \
  --nbval --nbval-current-env --nbval-cell-timeout=120 --nbval-sanitize-with notebooks/nbval_sanitize.cfg "$@"
