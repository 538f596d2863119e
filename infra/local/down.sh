#!/usr/bin/env bash
# Stop the local Ray head and MLflow server started by up.sh: python -m jobs.local_stack down [options].
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="${repo}/.venv/bin/python"
[[ -x "${python}" ]] || { echo "no virtual environment at ${python}; create .venv first" >&2; exit 1; }
cd "${repo}"
exec "${python}" -m jobs.local_stack down "$@"
