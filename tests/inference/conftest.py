"""Fixtures of the `cit infer` tests (helpers live in infer_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from infer_helpers import BUNDLE, write_input_tree, write_tiny_checkpoint


@pytest.fixture(scope="session")
def bundle_dir() -> Path:
    if not (BUNDLE / "configs" / "inference.json").is_file():
        pytest.skip(f"bundle not found: {BUNDLE}")
    return BUNDLE


@pytest.fixture(scope="session")
def tiny_ckpt(bundle_dir, tmp_path_factory) -> Path:
    """Random-init weights of the bundle's own architecture, saved as a state dict with the model
    description that training writes beside it (``model_info.json``; inputs of IMAGE_SIZE pixels)."""
    return write_tiny_checkpoint(bundle_dir, tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="session")
def input_tree(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("inputs")
    return root, write_input_tree(root)
