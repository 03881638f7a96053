"""BatchNorm recalibration on un-augmented training images, run by a real MONAI SupervisedTrainer."""

from __future__ import annotations

import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.transforms import Lambdad

from toolkit.engines import BatchNormRecalibration, recalibration_loader


def _items(n: int = 24) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(1, 8, 8, generator=g), "label": i % 2} for i in range(n)]


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3),
        torch.nn.BatchNorm2d(3),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(3, 2),
    )


def _train(recalibrate: bool, epochs: int = 1) -> torch.nn.Module:
    """Epochs on strongly 'augmented' images (x * 4 + 3), optionally recalibrating on the clean ones."""
    items = _items()
    augmented = DataLoader(
        Dataset(items, Lambdad("image", lambda x: x * 4 + 3)), batch_size=8, shuffle=epochs > 1
    )
    net = _net()  # seeds the global RNG: the shuffles of both runs start alike
    loader = recalibration_loader(items, lambda d: d, len(items), batch_size=8) if recalibrate else None
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=augmented,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_function=torch.nn.CrossEntropyLoss(),
        train_handlers=[BatchNormRecalibration(net, loader, "cpu")],
    )
    trainer.run()
    return net


def test_statistics_describe_the_clean_images_and_the_weights_are_untouched():
    plain, recalibrated = _train(False), _train(True)
    clean = torch.stack([item["image"] for item in _items()])
    with torch.no_grad():
        features = recalibrated[0](clean)  # the conv output the BatchNorm layer normalises
    bn = recalibrated[1]
    assert torch.allclose(bn.running_mean, features.mean(dim=(0, 2, 3)), atol=1e-5)
    # update_bn averages the batches' (unbiased) variances: three batches of 8
    batch_vars = torch.stack([f.var(dim=(0, 2, 3)) for f in features.split(8)])
    assert torch.allclose(bn.running_var, batch_vars.mean(dim=0), rtol=1e-4)
    # without recalibration the statistics still describe the augmented images
    assert not torch.allclose(plain[1].running_mean, bn.running_mean, atol=1e-2)
    # it changes what BatchNorm remembers, not how the network trains: over shuffled epochs too
    plain, recalibrated = _train(False, epochs=3), _train(True, epochs=3)
    for (name, a), b in zip(plain.named_parameters(), recalibrated.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert recalibrated[1].momentum == 0.1 and recalibrated[1].training, "momentum and training mode restored"


def test_loader_takes_each_image_once_in_a_seeded_sample_and_is_off_at_zero():
    items = [
        {"image": f"img{i % 10}.png", "label": 0} for i in range(30)
    ]  # e.g. minority copies repeat paths
    assert recalibration_loader(items, lambda d: d, 0, batch_size=4) is None
    with pytest.raises(ValueError, match="at least 2 images"):
        recalibration_loader(items, lambda d: d, 1, batch_size=4)
    assert len(recalibration_loader(items, lambda d: d, 6, batch_size=4)) == 1, "a last batch of 2 is dropped"
    loader = recalibration_loader(items, lambda d: d, 6, batch_size=4, seed=1)
    picked = [d["image"] for d in loader.dataset]
    assert len(picked) == len(set(picked)) == 6
    again = [d["image"] for d in recalibration_loader(items, lambda d: d, 6, batch_size=4, seed=1).dataset]
    assert picked == again
    every = recalibration_loader(items, lambda d: d, 100, batch_size=4)
    assert sorted(d["image"] for d in every.dataset) == sorted({f"img{i}.png" for i in range(10)})
