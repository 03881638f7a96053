"""create_network over timm (2-D) and MONAI (3-D), parameter counts and Grad-CAM target layers."""

from __future__ import annotations

import pytest
import torch

from toolkit.networks import (
    SUPPORTED_2D,
    SUPPORTED_3D,
    count_parameters,
    create_network,
    gradcam_target_layer,
)

# Forwarding the 100M-parameter nets would dominate the run time; they are only instantiated.
_FORWARD = {"resnet18", "resnet34d", "resnet50d", "densenet121", "efficientnet_b0", "inception_v3",
            "deit_tiny_distilled_patch16_224"}


@pytest.mark.parametrize("name", SUPPORTED_2D)
def test_every_supported_2d_network_builds(name):
    kwargs = {"img_size": 64} if name.startswith("deit") else {}
    model = create_network(name, num_classes=5, **kwargs)
    assert model.pretrained_report is None
    trainable, total = count_parameters(model)
    assert trainable == total > 0
    assert model.get_submodule(gradcam_target_layer(model)) is not None
    if name in _FORWARD:
        size = 75 if name == "inception_v3" else 64  # Inception v3 needs at least 75 px
        with torch.no_grad():
            out = model.eval()(torch.randn(2, 3, size, size))
        assert out.shape == (2, 5)


def test_grey_scale_dropout_and_extra_kwargs_reach_timm():
    model = create_network("efficientnet_b0", num_classes=2, in_channels=1, drop_rate=0.3)
    assert model.conv_stem.in_channels == 1 and model.drop_rate == 0.3
    deit = create_network("deit_tiny_distilled_patch16_224", num_classes=2, img_size=32)
    assert deit.patch_embed.img_size == (32, 32)


def test_unknown_name_lists_supported_names():
    with pytest.raises(ValueError, match="resnet18d.*deit_base_distilled_patch16_224"):
        create_network("resnet9000", num_classes=2)
    with pytest.raises(ValueError, match="densenet121"):
        create_network("vgg16", num_classes=2, spatial_dims=3)


@pytest.mark.parametrize("bad", [{"num_classes": 0}, {"in_channels": 0}, {"spatial_dims": 1},
                                 {"pretrained_fallback": "ignore"}, {"pretrained": 3}])
def test_invalid_arguments_are_rejected(bad):
    kwargs = {"name": "resnet18", "num_classes": 2, **bad}
    with pytest.raises((ValueError, TypeError)):
        create_network(**kwargs)


@pytest.mark.parametrize(("name", "size"), [("resnet18", 16), ("densenet121", 32), ("efficientnet_b0", 32)])
def test_3d_monai_networks(name, size):
    assert name in SUPPORTED_3D
    model = create_network(name, num_classes=3, in_channels=1, spatial_dims=3)
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 1, size, size, size))
    assert out.shape == (1, 3)
    assert model.get_submodule(gradcam_target_layer(model)) is not None


@pytest.mark.parametrize(("name", "expected"), [
    ("resnet18", "layer4"), ("resnet50d", "layer4"), ("densenet121", "features.norm5"),
    ("efficientnet_b0", "bn2"), ("vgg16_bn", "features.43"), ("inception_v3", "Mixed_7c"),
])
def test_gradcam_target_is_the_last_spatial_feature_map(name, expected):
    """The chosen layer's output is the last 4-D map before pooling, so Grad-CAM has a grid to weight."""
    model = create_network(name, num_classes=2).eval()
    assert gradcam_target_layer(model) == expected
    seen = {}

    def record(_module, _inputs, output):
        seen["shape"] = tuple(output.shape)

    model.get_submodule(expected).register_forward_hook(record)
    size = 128 if name == "inception_v3" else 64  # Inception's valid convolutions shrink more
    with torch.no_grad():
        model(torch.randn(1, 3, size, size))
    assert len(seen["shape"]) == 4 and seen["shape"][-1] >= 2, seen


def test_gradcam_target_for_vision_transformers_is_last_block_norm():
    model = create_network("deit_tiny_distilled_patch16_224", num_classes=2, img_size=32)
    assert gradcam_target_layer(model) == "blocks.11.norm1"
