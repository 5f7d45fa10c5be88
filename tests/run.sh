#!/usr/bin/env bash
# The test command from the README: lint, then the whole suite (unit, real server and worker,
# notebooks under nbval, and the JupyterLab browser test) on the project's virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
# The browser test drives Debian's chromium (playwright cannot download its own browser here).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium for the browser test (apt-get)..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "could not install chromium: the browser test will fail and say so"
  else
    echo "chromium is not installed: run 'sudo apt-get install -y chromium' (the browser test needs it)"
  fi
fi
$PY -m ruff check mediaq tests benchmarks
$PY -m pytest -p no:cacheprovider tests notebooks \
  --nbval --nbval-current-env --nbval-cell-timeout=120 --nbval-sanitize-with notebooks/nbval_sanitize.cfg "$@"
