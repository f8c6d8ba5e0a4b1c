#!/usr/bin/env bash
# Create (or update) the project virtual environment in .venv and install sparkmim into it.
#   bash scripts/setup_env.sh          # runtime only
#   bash scripts/setup_env.sh test     # with the test extras
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade "pip>=23" 2>&1 | grep -v "^WARNING: Location" || true
target="."
[ -n "$extras" ] && target=".[$extras]"
set -o pipefail
.venv/bin/python -m pip install -q -c scripts/constraints.txt -e "$target" 2>&1 | { grep -v "^WARNING: Location" || true; }
.venv/bin/python -c "import sparkmim, torch, timm; print(f'sparkmim ready: torch {torch.__version__}, timm {timm.__version__}')"
