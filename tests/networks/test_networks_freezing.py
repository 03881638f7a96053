"""Freezing: frozen parts (weights AND batch-norm statistics) stay bit-identical through training."""

from __future__ import annotations

import pytest
import timm
import torch

from toolkit.networks import count_parameters, create_network
from toolkit.networks.freezing import stage_parameter_names


def _one_sgd_step(model: torch.nn.Module, x: torch.Tensor, num_classes: int) -> None:
    """A training step that hands *all* parameters to the optimizer, as a careless training script would."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loss = torch.nn.functional.cross_entropy(model(x), torch.arange(x.shape[0]) % num_classes)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_freeze_two_stages_of_resnet18_keeps_them_bit_identical():
    torch.manual_seed(0)
    model = create_network("resnet18", num_classes=3, freeze=2)
    before = _snapshot(model)
    _one_sgd_step(model, torch.randn(4, 3, 64, 64), 3)
    after = model.state_dict()

    frozen_prefixes = ("conv1.", "bn1.", "layer1.")
    frozen = [k for k in after if k.startswith(frozen_prefixes)]
    assert "bn1.running_mean" in frozen and "layer1.1.bn2.running_var" in frozen
    for key in frozen:
        assert torch.equal(after[key], before[key]), key
    # Everything after the frozen stages trained, statistics included.
    for key in ("layer2.0.conv1.weight", "layer4.1.conv2.weight", "fc.weight", "layer2.0.bn1.running_mean"):
        assert not torch.equal(after[key], before[key]), key
    assert not model.conv1.weight.requires_grad and model.layer2[0].conv1.weight.requires_grad
    trainable, total = count_parameters(model)
    stem_and_layer1 = sum(p.numel() for n, p in model.named_parameters() if n.startswith(frozen_prefixes))
    assert trainable == total - stem_and_layer1


def test_frozen_checkpoint_loads_strictly_into_an_unfrozen_network():
    """Inference builds the network without freeze; the training checkpoint must still load strictly."""
    frozen = create_network("resnet18", num_classes=2, freeze=3)
    plain = create_network("resnet18", num_classes=2)
    plain.load_state_dict(frozen.state_dict(), strict=True)
    assert torch.equal(plain.layer2[0].bn1.running_var, frozen.layer2[0].bn1.running_var)


@pytest.mark.parametrize(
    "name", ["resnet18", "densenet121", "efficientnet_b0", "deit_tiny_distilled_patch16_224"]
)
def test_integer_freeze_uses_timm_stages_and_never_the_head(name):
    kwargs = {"img_size": 32} if name.startswith("deit") else {}
    model = timm.create_model(name, num_classes=2, **kwargs)
    stages = stage_parameter_names(model)
    head = {n for n, _ in model.named_parameters()} - {n for s in stages for n in s}
    assert head and all(n.startswith(("fc", "classifier", "head")) for n in head)

    frozen_all = create_network(name, num_classes=2, freeze=len(stages), **kwargs)
    trainable = {n for n, p in frozen_all.named_parameters() if p.requires_grad}
    assert trainable == head
    with pytest.raises(ValueError, match="out of range"):
        create_network(name, num_classes=2, freeze=len(stages) + 1, **kwargs)


def test_stage_one_is_the_stem():
    model = timm.create_model("resnet50d", num_classes=2)
    assert stage_parameter_names(model)[0] == [
        n for n, _ in model.named_parameters() if n.startswith(("conv1.", "bn1."))
    ]


def test_prefix_freeze_on_3d_monai_network_keeps_batch_norm_statistics():
    torch.manual_seed(0)
    model = create_network(
        "resnet18", num_classes=2, in_channels=1, spatial_dims=3, freeze=["conv1", "bn1", "layer1"]
    )
    before = _snapshot(model)
    _one_sgd_step(model, torch.randn(2, 1, 16, 16, 16), 2)
    after = model.state_dict()
    assert set(after) == set(before)  # same keys: checkpoints stay interchangeable
    for key in after:
        if key.startswith(("conv1.", "bn1.", "layer1.")):
            assert torch.equal(after[key], before[key]), key
    assert not torch.equal(after["layer2.0.bn1.running_mean"], before["layer2.0.bn1.running_mean"])
    assert not model.bn1.training and model.layer2[0].bn1.training


def test_bad_freeze_values():
    with pytest.raises(ValueError, match="matches no parameter"):
        create_network("resnet18", num_classes=2, freeze=["layer9"])
    with pytest.raises(ValueError, match="prefixes"):
        create_network("resnet18", num_classes=2, spatial_dims=3, in_channels=1, freeze=1)
    model = create_network("resnet18", num_classes=2, freeze=["layer1"])  # not "layer10", not the stem
    assert model.conv1.weight.requires_grad and not model.layer1[0].conv1.weight.requires_grad
