"""Shared test set-up: thread limits for a 2-core machine and the location of the real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tiny batches on 2 cores: more threads only add contention (see ../shared/perf-notes.md).
torch.set_num_threads(int(os.environ.get("CIT_TEST_THREADS", "1")))

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CIT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real public data beside the repo; tests needing it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set CIT_SHARED_DATA)")
    return SHARED_DATA
