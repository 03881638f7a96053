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


def _structured_image(channels: int, size: int = 64) -> torch.Tensor:
    """A bright square on a dark, slightly noisy background: something for the network to respond to."""
    gen = torch.Generator().manual_seed(0)
    x = 0.1 * torch.rand(1, channels, size, size, generator=gen)
    x[..., size // 4 : size // 2, size // 3 : 2 * size // 3] += 1.0
    return x


@pytest.mark.parametrize("freeze", [1, 2, ["conv1", "bn1", "layer1", "layer2"]])
def test_frozen_early_layers_give_a_real_heatmap(freeze):
    """Frozen early layers (requires_grad False, FrozenBatchNorm2d) must not starve Grad-CAM of gradients:
    the map of a transfer-learning network is not all zeros."""
    torch.manual_seed(0)
    net = create_network("resnet18", 3, pretrained=None, freeze=freeze).eval()
    frozen = [n for n, p in net.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("conv1", "bn1", "layer")) for n in frozen)
    explainer = Explainer(net)
    for class_idx in range(3):
        maps = explainer(_structured_image(3), class_idx=class_idx)
        assert maps.shape == (1, 64, 64) and np.isfinite(maps).all()
        assert maps.max() > 0.5 and maps.std() > 0.01, (freeze, class_idx, maps.max(), maps.std())


def test_explain_gives_display_plane_and_map_for_overlay(resnet):
    shown, heatmap = Explainer(resnet).explain(_structured_image(3)[0], class_idx=1)
    assert shown.shape == (64, 64, 3) and heatmap.shape == (64, 64)
    assert overlay(shown, heatmap).shape == (64, 64, 3)


def test_grey_image_normalised_per_channel_displays_grey():
    """ImageNet normalisation gives the three copies of a grey image different offsets and scales."""
    grey = np.random.default_rng(0).random((16, 16))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    shown = display_plane((grey[None] - mean[:, None, None]) / std[:, None, None])
    np.testing.assert_allclose(shown[..., 0], shown[..., 1], atol=1e-9)
    np.testing.assert_allclose(shown[..., 0], shown[..., 2], atol=1e-9)


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
