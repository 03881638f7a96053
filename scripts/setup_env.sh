#!/usr/bin/env bash
# Create ./.venv (once) and install the toolkit with its pinned dependencies into it.
# Sourced by scripts/demo.sh and scripts/test.sh; re-installs only when pyproject.toml changes.
set -euo pipefail
VENV="${CIT_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  "$VENV/bin/python" -m pip install --quiet -e ".[dev]"
  touch "$stamp"
fi
export PATH="$(cd "$VENV" && pwd)/bin:$PATH"
