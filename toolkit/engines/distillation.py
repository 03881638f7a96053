"""Knowledge distillation (DeiT, Touvron et al. 2021) as an iteration of MONAI's ``SupervisedTrainer``.

``DistillationIteration`` is passed as the trainer's ``iteration_update``: every MONAI / Ignite
handler (checkpoints, validation, TensorBoard, stats, metrics on ``pred``) keeps working, because
the engine, its events and its output dict are MONAI's own. The loss of one batch is

    alpha * loss_function(class_logits, labels) + beta * distillation(distillation_logits, teacher)

``loss_function`` is the trainer's (the bundle's ``loss``, e.g. cross-entropy). The distillation
term is ``soft`` (``T**2 * KL(softmax(teacher / T) || softmax(student / T))``, Hinton et al.'s
scaling so its gradients keep their size across temperatures) or ``hard`` (cross-entropy to the
teacher's argmax, the DeiT paper's choice). A distilled DeiT returns ``(class, distillation)``
logits in training once ``set_distilled_training(True)`` is called (done here) and their average in
eval mode, which is what validation, evaluation and inference use. A student with one head
(e.g. a CNN) uses its logits for both terms: plain Hinton distillation.

Without a teacher the distillation head learns the labels instead (``loss_function`` on it), so
both heads are trained and their average at inference means something: the no-distillation
baseline of the same network.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter

import torch
import torch.nn.functional as F
from ignite.metrics import Average
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

DISTILLATION_MODES = ("soft", "hard")
# extra keys of the iteration's output dict (beside MONAI's image / label / pred / loss)
LOSS_CE, LOSS_DISTILL = "loss_ce", "loss_distill"


def distillation_term(student: torch.Tensor, teacher: torch.Tensor, mode: str, temperature: float = 1.0):
    """The distillation loss of a batch: ``soft`` = ``T**2 * KL(p_teacher^T || p_student^T)``
    (mean over the batch), ``hard`` = cross-entropy of ``student`` to the teacher's argmax."""
    if mode == "soft":
        t = float(temperature)
        return (
            F.kl_div(
                F.log_softmax(student / t, dim=1),
                F.log_softmax(teacher / t, dim=1),
                reduction="batchmean",
                log_target=True,
            )
            * t
            * t
        )
    if mode == "hard":
        return F.cross_entropy(student, teacher.argmax(dim=1))
    raise ValueError(f"distillation mode must be one of {DISTILLATION_MODES}, got {mode!r}")


class DistillationLoss:
    """``alpha * loss_function(class_logits, labels) + beta * distillation``; returns (total, ce, distill).

    ``teacher_logits=None``: the distillation logits learn the labels (``loss_function``) instead.
    """

    def __init__(
        self,
        alpha: float = 0.5,
        beta: float = 0.5,
        mode: str = "hard",
        temperature: float = 3.0,
        loss_function: Callable | None = None,
    ):
        if mode not in DISTILLATION_MODES:
            raise ValueError(f"distillation mode must be one of {DISTILLATION_MODES}, got {mode!r}")
        if float(temperature) <= 0:
            raise ValueError(f"distillation temperature must be > 0, got {temperature}")
        if float(alpha) < 0 or float(beta) < 0:
            raise ValueError(f"distillation weights must be >= 0, got alpha={alpha}, beta={beta}")
        self.alpha, self.beta = float(alpha), float(beta)
        self.mode, self.temperature = mode, float(temperature)
        self.loss_function = loss_function or torch.nn.CrossEntropyLoss()

    def __call__(self, class_logits, distill_logits, labels, teacher_logits=None):
        ce = self.loss_function(class_logits, labels).mean()
        if teacher_logits is None:
            distill = self.loss_function(distill_logits, labels).mean()
        else:
            distill = distillation_term(distill_logits, teacher_logits.float(), self.mode, self.temperature)
        return self.alpha * ce + self.beta * distill, ce, distill


class FrozenTeacher(torch.nn.Module):
    """A trained network that never learns: eval mode whatever ``train()`` says, no gradients,
    run under ``torch.no_grad``. ``input_adapter`` turns the student's input tensor into the
    teacher's (another normalisation or size); None = the same tensor."""

    def __init__(self, network: torch.nn.Module, input_adapter: torch.nn.Module | None = None):
        super().__init__()
        self.network = network
        self.input_adapter = input_adapter if input_adapter is not None else torch.nn.Identity()
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        return super().train(False)  # frozen: dropout off and batch-norm statistics fixed, always

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.network(self.input_adapter(x))


class DistillationIteration:
    """``iteration_update`` for ``SupervisedTrainer``: one step of DeiT training with ``teacher``.

    Follows ``SupervisedTrainer._iteration`` (batch preparation, the events handlers listen to,
    AMP with the engine's scaler, gradient accumulation) and returns MONAI's output dict with
    ``pred`` = the average of the two heads (so train metrics see what inference sees), ``loss``
    = the total, and ``loss_ce`` / ``loss_distill`` (detached) for logging. The loss function of
    the class term is the trainer's ``loss_function``.
    """

    def __init__(
        self,
        teacher: torch.nn.Module | None,
        alpha: float = 0.5,
        beta: float = 0.5,
        mode: str = "hard",
        temperature: float = 3.0,
    ):
        if teacher is not None and not isinstance(teacher, FrozenTeacher):
            teacher = FrozenTeacher(teacher)
        self.teacher = teacher
        self.alpha, self.beta, self.mode, self.temperature = alpha, beta, mode, temperature
        DistillationLoss(alpha, beta, mode, temperature)  # check the settings now, not at the first batch

    def metrics(self) -> dict:
        """Epoch means of the two loss terms (``train_loss_ce``, ``train_loss_distill``); see :func:`iteration_metrics`."""
        return {f"train_{key}": Average(output_transform=itemgetter(key)) for key in (LOSS_CE, LOSS_DISTILL)}

    def __call__(self, engine, batchdata) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        args, kwargs = (batch[2], batch[3]) if len(batch) == 4 else ((), {})
        if targets.ndim > 1:
            raise ValueError(
                f"distillation needs one class index per image; got labels of shape {tuple(targets.shape)} "
                "(multi-label training is not supported with a teacher)"
            )
        criterion = DistillationLoss(self.alpha, self.beta, self.mode, self.temperature, engine.loss_function)
        student = engine.network.module if hasattr(engine.network, "module") else engine.network
        if hasattr(student, "set_distilled_training"):
            student.set_distilled_training(True)  # timm: (class, distillation) logits in training
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}

        def forward_and_loss():
            outputs = engine.inferer(inputs, engine.network, *args, **kwargs)
            class_logits, distill_logits = (
                outputs if isinstance(outputs, (tuple, list)) else (outputs, outputs)
            )
            engine.state.output[Keys.PRED] = (class_logits + distill_logits) / 2
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            teacher_logits = None if self.teacher is None else self.teacher(inputs)
            total, ce, distill = criterion(class_logits, distill_logits, targets, teacher_logits)
            engine.state.output.update(
                {Keys.LOSS: total, LOSS_CE: ce.detach(), LOSS_DISTILL: distill.detach()}
            )
            engine.fire_event(IterationEvents.LOSS_COMPLETED)

        acc = max(int(getattr(engine, "accumulation_steps", 1)), 1)
        local = (engine.state.iteration - 1) % (engine.state.epoch_length or engine.state.iteration)
        zero_grad = local % acc == 0
        step = (local + 1) % acc == 0 or (local + 1) == engine.state.epoch_length
        engine.network.train()
        if self.teacher is not None:
            self.teacher.eval()
        if zero_grad:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        if engine.amp and engine.scaler is not None:
            with torch.autocast("cuda", **engine.amp_kwargs):
                forward_and_loss()
            loss = engine.state.output[Keys.LOSS]
            engine.scaler.scale(loss / acc).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            if step:
                engine.scaler.step(engine.optimizer)
                engine.scaler.update()
        else:
            forward_and_loss()
            (engine.state.output[Keys.LOSS] / acc).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            if step:
                engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


def iteration_metrics(iteration_update) -> dict:
    """Ignite metrics an ``iteration_update`` offers for its own output keys (its ``metrics()``), e.g.
    the epoch means of the two loss terms of :class:`DistillationIteration`; ``{}`` for None or a
    plain function. The base train config adds them to the trainer's metrics, so StatsHandler,
    TensorBoard and the training history log them like ``train_loss``."""
    offer = getattr(iteration_update, "metrics", None)
    return dict(offer()) if callable(offer) else {}
