#!/usr/bin/env bash
# Local Prefect server on 127.0.0.1 (PREFECT_HOME=.prefect, analytics off) + the benchmark deployments.
#   scripts/serve.sh [--port 4200] [--runs runs] [--nightly-cron "0 2 * * *"] ...
# Then: PREFECT_API_URL=http://127.0.0.1:4200/api prefect deployment run benchmark/evaluate-c10 --watch
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
cd "$REPO"
exec "$PY" -m c123_pipeline.flows.serve "$@"
