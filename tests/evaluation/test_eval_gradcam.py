"""Grad-CAM / Grad-CAM++ through monai.visualize on the automatically chosen layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from toolkit.evaluation.gradcam import Explainer, display_plane, overlay
from toolkit.networks import create_network


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return create_network("resnet18", num_classes=3, in_channels=3).eval()


@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
def test_heatmaps_cover_the_input(resnet, method):
    explainer = Explainer(resnet, method=method)
    assert explainer.target_layer == "layer4"
    maps = explainer(torch.rand(2, 3, 64, 48))
    assert maps.shape == (2, 64, 48)
    assert maps.min() >= 0 and maps.max() <= 1 and maps.max() > 0.5  # normalised per image


def test_frozen_network_still_explains():
    torch.manual_seed(1)
    net = create_network("resnet18", num_classes=2, in_channels=1, freeze=5).eval()
    assert not any(p.requires_grad for n, p in net.named_parameters() if not n.startswith("fc"))
    maps = Explainer(net)(torch.rand(1, 1, 64, 64), class_idx=1)
    assert maps.shape == (1, 64, 64) and np.isfinite(maps).all()


def test_class_choice_changes_the_map(resnet):
    explainer = Explainer(resnet)
    x = torch.rand(1, 3, 64, 64)
    assert not np.allclose(explainer(x, class_idx=0), explainer(x, class_idx=2))


def test_bad_arguments_are_named(resnet):
    with pytest.raises(ValueError, match="unknown CAM method"):
        Explainer(resnet, method="lime")
    with pytest.raises(ValueError, match="not found"):
        Explainer(resnet, target_layer="layer9")


def test_overlay_is_rgb_in_range():
    image = display_plane(np.random.default_rng(0).normal(size=(1, 32, 32)))
    blended = overlay(image, np.linspace(0, 1, 32 * 32).reshape(32, 32))
    assert blended.shape == (32, 32, 3) and 0 <= blended.min() and blended.max() <= 1
