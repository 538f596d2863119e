#!/usr/bin/env bash
# Start (or reuse) the local Ray head and MLflow server: python -m jobs.local_stack up [options].
# Options are passed through, e.g. --dashboard-port 8266 --mlflow-port 5001 --root DIR.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="${repo}/.venv/bin/python"
[[ -x "${python}" ]] || { echo "no virtual environment at ${python}; create .venv first" >&2; exit 1; }
cd "${repo}"
exec "${python}" -m jobs.local_stack up "$@"
