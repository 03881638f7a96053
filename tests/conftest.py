"""Shared test set-up: thread limits for a 2-core machine and the location of the real data."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

pytest_plugins = ["pytester"]  # for tests of this conftest's own rules

# Tiny batches on 2 cores: more threads only add contention (see ../shared/perf-notes.md).
torch.set_num_threads(int(os.environ.get("CIT_TEST_THREADS", "1")))

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CIT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def load_script(name: str):
    """The module of ``scripts/<name>.py`` (scripts are not a package), loaded afresh."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def on_ci() -> bool:
    """True when the environment variable CI is "true" (or "1"), as CI services set it."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def require_shared_data(path: Path = SHARED_DATA) -> Path:
    """`path` if the folder exists; else skip the test on a developer machine, and fail it on CI (``CI=true``).

    CI always has the real data, so there a missing folder is a broken set-up, and a skip would hide it.
    Every test needing the real data goes through here (via the `shared_data` fixture).
    """
    if path.is_dir():
        return path
    message = f"real data not found at {path} (set CIT_SHARED_DATA)"
    if on_ci():
        pytest.fail(
            f"{message}; CI=true, where the data must be present, so this fails instead of skipping",
            pytrace=False,
        )
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real public data beside the repo: skips when absent, fails on CI (see `require_shared_data`)."""
    return require_shared_data(SHARED_DATA)


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory):
    """``module_tmp(name)``: a new folder like ``tmp_path_factory.mktemp(name)``, removed when the
    test module is done. pytest keeps its own folders to the end of the session, and the trained
    bundles of module fixtures (checkpoints with optimiser state, exports) would pile up to several
    GB on a CI disk that other jobs share."""
    made = []

    def mktemp(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mktemp
    for path in made:
        shutil.rmtree(path, ignore_errors=True)
