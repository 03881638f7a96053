"""The deploy virtualenv whose Python the tests in tests/deploy run the app and the packager with."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.bundles.bundle_helpers import REPO_ROOT


def deploy_python_or_skip(what: str) -> Path:
    """``$CIT_DEPLOY_VENV/bin/python`` (default deploy/.venv); skips the calling test module without it."""
    venv = Path(os.environ.get("CIT_DEPLOY_VENV", REPO_ROOT / "deploy" / ".venv"))
    python = venv / "bin" / "python"
    if not python.is_file():
        pytest.skip(
            f"MONAI Deploy virtualenv not found at {venv}: create it with `bash deploy/setup_env.sh` "
            f"(or set CIT_DEPLOY_VENV) to run {what}",
            allow_module_level=True,
        )
    return python
