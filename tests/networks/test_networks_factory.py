"""create_network over timm (2-D) and MONAI (3-D), parameter counts and Grad-CAM target layers."""

from __future__ import annotations

import pytest
import timm
import torch

from toolkit.networks import count_parameters, create_network, factory, gradcam_target_layer

# Every name the factory lists (2-D and 3-D), read from the module so that a name added later is tested too.
SUPPORTED = [pytest.param(name, 2, id=f"{name}-2d") for name in factory.SUPPORTED_2D] + [
    pytest.param(name, 3, id=f"{name}-3d") for name in factory.SUPPORTED_3D
]
SMALL = 32  # px per side: fast, and enough for five stride-2 stages
MIN_SIZE = {"inception_v3": 75}  # Inception v3's unpadded convolutions need at least 75 px


def _small_input_kwargs(name: str, spatial_dims: int) -> dict:
    """ViT-style timm nets (DeiT) are built for one input size: build them for the small test input."""
    cfg = timm.get_pretrained_cfg(name) if spatial_dims == 2 else None
    return {"img_size": SMALL} if cfg is not None and cfg.fixed_input_size else {}


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize(("name", "spatial_dims"), SUPPORTED)
def test_every_supported_network_forwards_to_a_num_classes_head(name, spatial_dims, in_channels):
    model = create_network(
        name,
        num_classes=3,
        in_channels=in_channels,
        spatial_dims=spatial_dims,
        pretrained=None,
        **_small_input_kwargs(name, spatial_dims),
    )
    assert model.pretrained_report is None
    trainable, total = count_parameters(model)
    assert trainable == total > 0
    assert model.get_submodule(gradcam_target_layer(model)) is not None
    size = MIN_SIZE.get(name, SMALL)
    with torch.no_grad():
        out = model.eval()(torch.randn(2, in_channels, *[size] * spatial_dims))
    assert out.shape == (2, 3)


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


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        ({"num_classes": 0}, ValueError, "num_classes must be a positive int"),
        ({"in_channels": 0}, ValueError, "in_channels must be a positive int"),
        ({"spatial_dims": 1}, ValueError, "spatial_dims must be 2 or 3"),
        ({"pretrained_fallback": "ignore"}, ValueError, "pretrained_fallback must be 'error' or 'warn'"),
        ({"pretrained": 3}, TypeError, "pretrained must be None, True, 'imagenet', a file path"),
    ],
)
def test_invalid_arguments_are_rejected(bad, error, message):
    kwargs = {"name": "resnet18", "num_classes": 2, **bad}
    with pytest.raises(error, match=message):
        create_network(**kwargs)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("resnet18", "layer4"),
        ("resnet50d", "layer4"),
        ("densenet121", "features.norm5"),
        ("efficientnet_b0", "bn2"),
        ("vgg16_bn", "features.43"),
        ("inception_v3", "Mixed_7c"),
    ],
)
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
