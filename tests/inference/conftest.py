"""Fixtures of the `cit infer` tests (helpers live in infer_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from infer_helpers import BUNDLE, write_input_tree


@pytest.fixture(scope="session")
def bundle_dir() -> Path:
    if not (BUNDLE / "configs" / "inference.json").is_file():
        pytest.skip(f"bundle not found: {BUNDLE}")
    return BUNDLE


@pytest.fixture(scope="session")
def tiny_ckpt(bundle_dir, tmp_path_factory) -> Path:
    """Random-init weights of the bundle's own ``network_def``, saved as a state dict."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle_dir)
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save(network.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def input_tree(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("inputs")
    return root, write_input_tree(root)
