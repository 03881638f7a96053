"""Self-supervised pretraining pieces: two-view transform, objectives, the MONAI trainer iteration;
distillation of the ImageNet Lite0 classifier into a trunk (method ``distill``)."""

from pathlib import Path

import matplotlib
import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Events
from monai.data import CacheDataset, DataLoader
from monai.engines import SupervisedTrainer
from monai.losses import ContrastiveLoss
from monai.utils import set_determinism

from toolkit.bundle import preprocessing_transforms
from toolkit.bundle.teacher import imagenet_teacher
from toolkit.data import load_datalist, make_synthetic_dataset
from toolkit.engines.ssl import (
    ContrastiveIteration,
    SimSiamLoss,
    embedding_spread,
    ssl_loss,
    ssl_network,
    trunk_of,
)
from toolkit.networks import create_network
from toolkit.transforms.ssl_views import TwoViewsd

SIZE = 32
SSL_TRAIN = Path(__file__).resolve().parents[2] / "bundles" / "pretrain_ssl" / "configs" / "train.json"


def ssl_recipe(image_size: int = SIZE):
    """MONAI's ConfigParser on the pretraining bundle's train.json, at ``image_size``."""
    from monai.bundle import ConfigParser

    from toolkit.bundle.configs import read_config

    parser = ConfigParser(read_config(SSL_TRAIN))
    parser["image_size"] = image_size
    return parser


def bundle_views(image_size: int = SIZE) -> list:
    """The pretraining bundle's own view_augmentation list, built at ``image_size``."""
    return ssl_recipe(image_size).get_parsed_content("view_augmentation")


def views_of(image_size: int = SIZE):
    """The bundle's two-view chain (its loading, normalisation and view_augmentation)."""
    return ssl_recipe(image_size).get_parsed_content("train#preprocessing")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    datalist = make_synthetic_dataset(
        tmp_path_factory.mktemp("ssl") / "data", n_patients=6, images_per_patient=2, image_size=48, seed=3
    )
    doc = load_datalist(datalist)
    return [{"image": i["image"]} for split in ("training", "validation", "test") for i in doc[split]]


def _reference_nt_xent(z1, z2, temperature):
    """SimCLR's NT-Xent as cross-entropy: each of the 2B embeddings must pick its pair among the other 2B-1."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    n = z1.shape[0]
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(logits, target)


def test_monai_contrastive_loss_is_nt_xent_for_a_batch_of_pairs():
    generator = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 16, generator=generator), torch.randn(6, 16, generator=generator)
    for temperature in (0.1, 0.5):
        expected = _reference_nt_xent(z1, z2, temperature)
        assert torch.allclose(ContrastiveLoss(temperature=temperature)(z1, z2), expected, atol=1e-5)


def test_two_views_differ_and_repeat_with_the_seed(images):
    transform = views_of()

    def views(seed):
        set_determinism(seed)
        transform.set_random_state(seed)
        return transform(images[0])

    first, again, other = views(0), views(0), views(1)
    assert set(first) == {"view1", "view2"}  # "image" replaced by the two views
    assert first["view1"].shape == (3, SIZE, SIZE) and first["view1"].dtype == torch.float32
    assert not torch.allclose(first["view1"], first["view2"])
    assert torch.equal(first["view1"], again["view1"]) and torch.equal(first["view2"], again["view2"])
    assert not torch.allclose(first["view1"], other["view1"])


def test_two_views_needs_the_image_key():
    with pytest.raises(KeyError, match="no 'image'"):
        TwoViewsd("image", augmentation=bundle_views())({"label": 1})
    with pytest.raises(ValueError, match="augmentation is empty"):
        TwoViewsd("image")


def _losses_on_a_fixed_batch(images, network, method, steps=6):
    """The loss after each of ``steps`` updates of a real MONAI trainer on one seeded batch of views."""
    set_determinism(0)
    dataset = CacheDataset(images[:8], views_of(), progress=False)
    batch = next(iter(DataLoader(dataset, batch_size=8)))
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=[batch] * steps,
        network=network,
        optimizer=torch.optim.Adam(network.parameters(), 1e-3),
        loss_function=ssl_loss(method),
        iteration_update=ContrastiveIteration(),
        decollate=False,
    )
    losses = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"]))
    )
    trainer.run()
    return losses


@pytest.mark.parametrize("method", ["simclr", "simsiam"])
def test_iteration_reduces_the_loss_on_a_fixed_batch(images, method):
    """Real MONAI trainer with the iteration: repeated steps on one batch of views lower the objective."""
    network = ssl_network("resnet18", method=method, projection_dim=32, hidden_dim=64)
    losses = _losses_on_a_fixed_batch(images, network, method)
    assert len(losses) == 6
    # deterministic (seeded); measured drops: SimCLR 4.06 -> 1.53, SimSiam -0.02 -> -0.14 (minimum -1)
    assert sum(losses[3:]) / 3 < sum(losses[:3]) / 3 - 0.03, losses


GREY_STUDENT = {"image_size": SIZE, "channels": 3, "colour": "grey", "intensity": "imagenet"}


def test_the_imagenet_teacher_names_grace_hopper_from_the_students_input():
    """The student's tensor (ImageNet mean / std, RGB, 224 px) is converted to Lite0's own 0.5 / 0.5
    input: the teacher still gives the classic answer, military uniform."""
    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    student = {"image_size": 224, "channels": 3, "colour": "rgb", "intensity": "imagenet"}
    image = preprocessing_transforms(student, label_key=None)({"image": str(photo)})["image"]
    teacher = imagenet_teacher("tf_efficientnet_lite0", student)
    probs = teacher(image[None]).softmax(1)[0]
    assert int(probs.argmax()) == 652 and probs[652] > 0.3
    assert not any(p.requires_grad for p in teacher.parameters())


def test_distillation_matches_the_teachers_imagenet_output(images):
    """Function matching in the real MONAI trainer: the student's KL to the frozen teacher falls on a
    fixed batch, the teacher does not move, and the trunk written afterwards holds no teacher weight."""
    teacher = imagenet_teacher("tf_efficientnet_lite0", GREY_STUDENT, image_size=64)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    network = ssl_network("resnet18", method="distill", teacher=teacher)
    assert network.projector.out_features == 1000
    losses = _losses_on_a_fixed_batch(images, network, "distill")
    # deterministic (seeded); measured: KL 6.2 -> 3.0 over the six steps
    assert sum(losses[3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not any(k.startswith("network.") or "teacher" in k for k in trunk_of(network).state_dict())


def test_distill_needs_a_teacher_and_only_distill_takes_one():
    with pytest.raises(ValueError, match="teacher is needed"):
        ssl_network("resnet18", method="distill")
    with pytest.raises(ValueError, match="teacher is needed"):
        ssl_network("resnet18", method="simclr", teacher=torch.nn.Linear(2, 2))
    assert ssl_loss("distill").temperature == 1.0 and ssl_loss("simclr").temperature == 0.2


def test_the_trunk_is_a_classifier_without_its_head():
    network = ssl_network("resnet18", method="simclr", projection_dim=16, hidden_dim=32)
    trunk_keys = set(trunk_of(network).state_dict())
    classifier_keys = set(create_network("resnet18", num_classes=3).state_dict())
    assert trunk_keys == classifier_keys - {"fc.weight", "fc.bias"}
    assert trunk_of(network)(torch.zeros(2, 3, SIZE, SIZE)).shape == (2, 512)
    with pytest.raises(TypeError, match="SSLNetwork"):
        trunk_of(torch.nn.Linear(2, 2))


def test_simsiam_loss_needs_the_predictor():
    with pytest.raises(ValueError, match="predictor"):
        SimSiamLoss()({"z": torch.ones(2, 4)}, {"z": torch.ones(2, 4)})
    with pytest.raises(ValueError, match="method must be one of"):
        ssl_loss("byol")


def test_iteration_names_missing_views():
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=[{"image": torch.zeros(2, 3, SIZE, SIZE)}],
        network=ssl_network("resnet18", projection_dim=8, hidden_dim=16),
        optimizer=None,
        loss_function=ssl_loss("simclr"),
        iteration_update=ContrastiveIteration(),
        decollate=False,
    )
    with pytest.raises(KeyError, match="two views"):
        trainer.run()


def test_embedding_spread_tells_collapse_from_spread():
    generator = torch.Generator().manual_seed(0)
    spread = torch.randn(256, 64, generator=generator)
    collapsed = torch.ones(256, 64) + 1e-4 * spread
    assert 0.9 < embedding_spread(spread) < 1.1
    assert embedding_spread(collapsed) < 0.05
