"""DeiT distillation as a MONAI SupervisedTrainer iteration: the loss on hand-computed batches, a
real epoch with a tiny distilled DeiT student and a tiny CNN teacher, the teacher kept frozen."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from ignite.metrics import Accuracy
from monai.engines import SupervisedTrainer
from monai.handlers import from_engine

from toolkit.engines import (
    DistillationIteration,
    DistillationLoss,
    FrozenTeacher,
    distillation_term,
    iteration_metrics,
    prepare_batch_for,
)
from toolkit.networks import create_network

# a batch of 2 images, 3 classes: student class / distillation logits, teacher logits, labels
CLS = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]]
DIST = [[1.0, 1.0, 0.0], [-1.0, 0.0, 2.0]]
TEACHER = [[0.0, 3.0, 1.0], [1.0, 0.0, 0.5]]  # argmax 1 and 0
LABELS = [0, 1]


def _log_softmax(row: list[float], t: float = 1.0) -> list[float]:
    scaled = [v / t for v in row]
    top = max(scaled)
    norm = top + math.log(sum(math.exp(v - top) for v in scaled))
    return [v - norm for v in scaled]


def _ce_by_hand(rows, targets) -> float:
    return sum(-_log_softmax(r)[y] for r, y in zip(rows, targets, strict=True)) / len(rows)


def _soft_by_hand(student, teacher, t) -> float:
    """t^2 x mean over the batch of sum_k p_teacher(k) (log p_teacher(k) - log p_student(k)), all at temperature t."""
    total = 0.0
    for s_row, t_row in zip(student, teacher, strict=True):
        log_s, log_t = _log_softmax(s_row, t), _log_softmax(t_row, t)
        total += sum(math.exp(lt) * (lt - ls) for ls, lt in zip(log_s, log_t, strict=True))
    return t * t * total / len(student)


def _tensors():
    return (torch.tensor(CLS), torch.tensor(DIST), torch.tensor(LABELS), torch.tensor(TEACHER))


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_soft_term_is_temperature_scaled_kl_to_the_softened_teacher(temperature):
    _, dist, _, teacher = _tensors()
    got = distillation_term(dist, teacher, "soft", temperature).item()
    assert got == pytest.approx(_soft_by_hand(DIST, TEACHER, temperature), rel=1e-6)


def test_hard_term_is_cross_entropy_to_the_teacher_argmax():
    _, dist, _, teacher = _tensors()
    assert distillation_term(dist, teacher, "hard").item() == pytest.approx(
        _ce_by_hand(DIST, [1, 0]), rel=1e-6
    )


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_total_loss_is_alpha_ce_plus_beta_distillation(mode):
    cls, dist, labels, teacher = _tensors()
    total, ce, distill = DistillationLoss(alpha=0.3, beta=0.7, mode=mode, temperature=2.0)(
        cls, dist, labels, teacher
    )
    expected_distill = _soft_by_hand(DIST, TEACHER, 2.0) if mode == "soft" else _ce_by_hand(DIST, [1, 0])
    assert ce.item() == pytest.approx(_ce_by_hand(CLS, LABELS), rel=1e-6)
    assert distill.item() == pytest.approx(expected_distill, rel=1e-6)
    assert total.item() == pytest.approx(0.3 * _ce_by_hand(CLS, LABELS) + 0.7 * expected_distill, rel=1e-6)


def test_alpha_one_beta_zero_is_plain_cross_entropy_of_the_class_head():
    cls, dist, labels, teacher = _tensors()
    for mode in ("soft", "hard"):
        total, _, _ = DistillationLoss(alpha=1.0, beta=0.0, mode=mode)(cls, dist, labels, teacher)
        assert total.item() == pytest.approx(torch.nn.functional.cross_entropy(cls, labels).item(), rel=1e-7)


def test_without_teacher_the_distillation_head_learns_the_labels():
    cls, dist, labels, _ = _tensors()
    total, ce, distill = DistillationLoss(alpha=0.5, beta=0.5)(cls, dist, labels, None)
    assert distill.item() == pytest.approx(_ce_by_hand(DIST, LABELS), rel=1e-6)
    assert total.item() == pytest.approx(0.5 * ce.item() + 0.5 * distill.item(), rel=1e-6)


def test_bad_settings_are_refused_when_configured():
    with pytest.raises(ValueError, match="mode must be one of"):
        DistillationIteration(None, mode="medium")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        DistillationIteration(None, mode="soft", temperature=0)
    with pytest.raises(ValueError, match="weights must be >= 0"):
        DistillationIteration(None, alpha=-1)


# ---------------------------------------------------------------------------------------------
# a real SupervisedTrainer


def _teacher() -> torch.nn.Module:
    """A tiny CNN with batch norm and dropout, whose training mode would change its output and statistics."""
    torch.manual_seed(1)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Dropout(0.5),
        torch.nn.Linear(4, 3),
    )
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
    return net


def _data(n: int = 12, size: int = 32) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, size, size, generator=generator)
    labels = torch.arange(n) % 3
    return [{"image": images[i], "label": labels[i]} for i in range(n)]


def _trainer(network, iteration, epochs=1, lr=1e-3) -> SupervisedTrainer:
    loader = torch.utils.data.DataLoader(_data(), batch_size=4, shuffle=False)
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=loader,
        network=network,
        optimizer=torch.optim.Adam(network.parameters(), lr=lr),
        loss_function=torch.nn.CrossEntropyLoss(),
        prepare_batch=prepare_batch_for(network),
        key_train_metric={"train_accuracy": Accuracy(output_transform=from_engine(["pred", "label"]))},
        additional_metrics=iteration_metrics(iteration),
        iteration_update=iteration,
        decollate=False,
    )


def _deit_tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_network("deit_tiny_distilled_patch16_224", num_classes=3, img_size=32, depth=2)


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_one_epoch_trains_the_student_and_never_changes_the_teacher(mode):
    teacher_net = _teacher()
    before = copy.deepcopy(teacher_net.state_dict())
    student = _deit_tiny()
    student_before = copy.deepcopy(student.state_dict())
    iteration = DistillationIteration(teacher_net, alpha=0.5, beta=0.5, mode=mode, temperature=2.0)
    trainer = _trainer(student, iteration)
    iteration.teacher.train()  # a caller switching every module to training mode must not unfreeze it
    trainer.run()

    assert trainer.state.iteration == 3
    out = trainer.state.output
    assert out["pred"].shape == (4, 3) and out["loss"].requires_grad
    assert out["loss"].item() == pytest.approx(
        0.5 * out["loss_ce"].item() + 0.5 * out["loss_distill"].item(), rel=1e-5
    )
    assert {"train_accuracy", "train_loss_ce", "train_loss_distill"} <= set(trainer.state.metrics)
    after = teacher_net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), (
        "the teacher's weights or statistics changed"
    )
    assert not teacher_net.training and not any(p.requires_grad for p in teacher_net.parameters())
    changed = [k for k in student_before if not torch.equal(student_before[k], student.state_dict()[k])]
    assert (
        "head.weight" in changed and "head_dist.weight" in changed and "blocks.0.attn.qkv.weight" in changed
    )


def test_alpha_zero_trains_the_distillation_head_only():
    """The class head gets its gradient from the labels term alone: with alpha=0 it stays as it was."""
    student = _deit_tiny()
    cls_before, dist_before = student.head.weight.detach().clone(), student.head_dist.weight.detach().clone()
    _trainer(student, DistillationIteration(_teacher(), alpha=0.0, beta=1.0, mode="hard")).run()
    assert torch.equal(student.head.weight, cls_before)
    assert not torch.equal(student.head_dist.weight, dist_before)


def test_pred_is_the_average_of_the_two_heads_as_in_eval_mode():
    student = _deit_tiny()
    trainer = _trainer(
        student, DistillationIteration(_teacher()), lr=0.0
    )  # lr 0: the weights stay as they are
    trainer.run()
    batch = torch.stack([d["image"] for d in _data()[-4:]])
    student.train()
    with torch.no_grad():
        cls, dist = student(batch)  # distilled training mode: the two heads apart
    assert not torch.allclose(cls, dist)
    assert torch.allclose(trainer.state.output["pred"].detach(), (cls + dist) / 2, atol=1e-5)
    student.eval()
    with torch.no_grad():
        assert torch.allclose(
            student(batch), (cls + dist) / 2, atol=1e-5
        )  # what validation and inference see


def test_alpha_one_beta_zero_trains_exactly_as_a_plain_cross_entropy_trainer():
    """A one-head student with alpha=1, beta=0: the same weights as MONAI's own iteration gives."""

    def student():
        torch.manual_seed(3)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 3))

    distilled, plain = student(), student()
    _trainer(distilled, DistillationIteration(_teacher(), alpha=1.0, beta=0.0, mode="soft"), epochs=2).run()
    _trainer(plain, None, epochs=2).run()
    for (name, a), b in zip(distilled.state_dict().items(), plain.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-7), name
    assert not torch.equal(distilled[1].weight, student()[1].weight)  # it did train


def test_frozen_teacher_stays_in_eval_mode_and_runs_without_gradients():
    net = _teacher()
    teacher = FrozenTeacher(net, input_adapter=torch.nn.Upsample(scale_factor=2))
    teacher.train()
    net.train()  # even the wrapped network switched directly is put back by the next train() of the wrapper
    teacher.train(True)
    assert not net.training
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    out = teacher(x)
    assert out.shape == (2, 3) and not out.requires_grad
    assert torch.equal(out, teacher(x)), "eval mode: dropout off, the same output twice"


def test_multi_label_batches_are_refused():
    iteration = DistillationIteration(_teacher())
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 3))
    loader = [{"image": torch.randn(2, 3, 32, 32), "label": torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])}]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_function=torch.nn.BCEWithLogitsLoss(),
        iteration_update=iteration,
    )
    with pytest.raises(ValueError, match="multi-label training is not supported"):
        trainer.run()
