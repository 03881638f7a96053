#!/usr/bin/env bash
# Install (into ./.venv) and run the test suite. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
# The HTML report test renders pages in headless Chromium (Debian's package).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium could not be installed; its test will be skipped"
fi
# style first (seconds): the formatter and the linter configured in pyproject.toml
ruff format --check --quiet .
ruff check --quiet .
# Two workers (pytest-xdist; a test file stays on one worker, so its module fixtures are made once): the
# tests run torch on one thread each, so two cores run two test files at a time. CIT_TEST_WORKERS=0: serial.
python -m pytest -n "${CIT_TEST_WORKERS:-2}" --dist loadfile --durations=15 "$@"
