"""The multi-scale network: one trunk for every scale, pretrained weights and freezing on the trunk."""

from __future__ import annotations

import pytest
import timm
import torch

from toolkit.networks import create_network
from toolkit.networks.factory import gradcam_target_layer
from toolkit.networks.multiscale import MultiScaleNet


def test_forward_uses_one_trunk_at_every_scale():
    model = create_network("multiscale_resnet18", num_classes=5, in_channels=1, scales=[1.0, 0.5])
    assert isinstance(model, MultiScaleNet) and model.scales == [1.0, 0.5]
    seen = []
    model.trunk.register_forward_hook(lambda m, inputs, out: seen.append(tuple(inputs[0].shape[-2:])))
    out = model(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, 5) and sorted(seen) == [(32, 32), (64, 64)]
    assert seen[-1] == (64, 64)  # the finest scale runs last (what Grad-CAM hooks keep)
    assert model.head[-1].in_features == 2 * model.trunk.num_features
    assert gradcam_target_layer(model) == "trunk.layer4"


def test_pretrained_file_and_freezing_apply_to_the_trunk(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("resnet18", num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    model = create_network(
        "multiscale_resnet18", num_classes=3, pretrained=tmp_path / "resnet18.pth", freeze=2, scales=[1, 0.25]
    )
    torch.testing.assert_close(model.trunk.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "trunk.conv1.weight" in frozen and "trunk.layer1.0.conv1.weight" in frozen
    assert "trunk.layer2.0.conv1.weight" not in frozen and "head.1.weight" not in frozen
    assert model.pretrained_report.loaded


def test_bad_scales_are_refused():
    with pytest.raises(ValueError, match="scales must be distinct numbers"):
        create_network("multiscale_resnet18", num_classes=2, scales=[1.0, 2.0])
    with pytest.raises(ValueError, match="scales must be distinct numbers"):
        create_network("multiscale_resnet18", num_classes=2, scales=[])


def test_scales_for_a_plain_network_name_the_multiscale_one():
    # the multi-scale bundle's model_kwargs with `--model_name tf_efficientnet_lite0` (a TypeError from timm before)
    with pytest.raises(ValueError, match="name the multi-scale network 'multiscale_tf_efficientnet_lite0'"):
        create_network("tf_efficientnet_lite0", num_classes=2, scales=[1.0, 0.5])
