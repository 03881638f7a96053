#!/usr/bin/env bash
# Create the MONAI Deploy app's own virtualenv (default deploy/.venv, or $CIT_DEPLOY_VENV) with the
# MONAI Deploy App SDK (deploy/requirements.txt) and this repository's toolkit (`pip install -e .`),
# and print how long it took and how large it is. Kept apart from ./.venv: the SDK pulls holoscan and
# its own pins, which the toolkit's environment must not get. Re-running installs only what changed.
# Usage: bash deploy/setup_env.sh          (then: $CIT_DEPLOY_VENV/bin/python -m deploy --help)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${CIT_DEPLOY_VENV:-deploy/.venv}"
PYTHON="${PYTHON:-python3}"
start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.installed-$(cat pyproject.toml deploy/requirements.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -r deploy/requirements.txt -e .
  touch "$stamp"
fi
"$VENV/bin/python" - <<'PY'
import importlib.metadata as m
names = ("monai-deploy-app-sdk", "holoscan-cu13", "holoscan-cli", "torch", "monai", "pydicom", "highdicom",
         "clinical-imaging-toolkit")
print("installed:", ", ".join(f"{p} {m.version(p)}" for p in names))
PY
echo "deploy virtualenv: $VENV ($(du -sh "$VENV" | cut -f1)); setup took $(( $(date +%s) - start )) s"
