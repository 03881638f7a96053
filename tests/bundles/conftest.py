"""Fixtures shared by the bundle tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bundles.bundle_helpers import run_bundle
from toolkit.data import make_synthetic_dataset


@pytest.fixture(scope="session")
def tiny_brain_ct(tmp_path_factory) -> Path:
    """resnet18_brain_ct trained for one epoch at 32 px from random weights on tiny synthetic data
    (``data/datalist.json``, images below ``data/images``): ``models/`` and ``output/`` as a run
    writes them. Read-only for its users: copy what a test changes."""
    tmp = tmp_path_factory.mktemp("tiny_brain_ct")
    datalist = make_synthetic_dataset(
        tmp / "data", n_patients=12, images_per_patient=2, image_size=48, seed=1
    )
    run_bundle(
        "resnet18_brain_ct",
        "training",
        "train",
        tmp,
        dataset_dir=datalist,
        max_epochs=1,
        image_size=32,
        batch_size=4,
        pretrained=None,
    )
    return tmp
