"""What the engines watch during training: the key metric (accuracy, or mean AUROC for multi-label
models) and early stopping on the validation loss."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from ignite.engine import Engine
from ignite.metrics import Accuracy, EpochMetric
from monai.handlers import EarlyStopHandler, from_engine
from sklearn.metrics import roc_auc_score

logger = logging.getLogger(__name__)


def mean_auroc(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean one-vs-rest AUROC over the classes that have both outcomes in ``labels``.

    MONAI's ``ROCAUC`` returns NaN for the whole mean when one class has no positive (common for a
    rare finding in a small validation set), and a NaN key metric would stop checkpoint selection;
    here such a class is left out of the mean, and the mean is 0.5 when no class has both outcomes.
    """
    scores, truth = logits.detach().float().cpu().numpy(), labels.detach().cpu().numpy().astype(int)
    aucs = [
        roc_auc_score(truth[:, k], scores[:, k])
        for k in range(truth.shape[1])
        if 0 < truth[:, k].sum() < len(truth)
    ]
    return float(np.mean(aucs)) if aucs else 0.5


def key_metrics(prefix: str, multi_label: bool) -> dict:
    """``{<prefix>_accuracy: Accuracy}`` for single-label models, ``{<prefix>_mean_auroc: ...}`` for multi-label
    ones (accuracy of multi-hot outputs is exact-match, which says little with 14 findings)."""
    output = from_engine(["pred", "label"])
    if multi_label:
        return {
            f"{prefix}_mean_auroc": EpochMetric(mean_auroc, output_transform=output, check_compute_fn=False)
        }
    return {f"{prefix}_accuracy": Accuracy(output_transform=output)}


def early_stopping(patience: int | None, trainer: Engine, metric: str = "val_loss") -> list[EarlyStopHandler]:
    """MONAI's ``EarlyStopHandler`` for the validator, stopping ``trainer`` when ``metric`` (a loss: lower is
    better) has not improved for ``patience`` validations; ``[]`` when ``patience`` is None / 0."""
    if not patience:
        return []

    def score(engine: Engine) -> float:
        value = float(engine.state.metrics[metric])
        return -value if math.isfinite(value) else -math.inf

    logger.info("early stopping: patience %d validation(s) on %s", patience, metric)
    return [EarlyStopHandler(patience=int(patience), score_function=score, trainer=trainer)]


def tracked_whole_batches(handlers: list) -> list:
    """``handlers`` with MONAI's experiment-tracking handler fitted to this project's engine output.

    ``--tracking mlflow`` adds an ``MLFlowHandler`` that reads the loss with
    ``from_engine(['loss'], first=True)``, written for engines that decollate their output (a list of
    dicts); ours keep a batch whole (one dict, ``decollate`` false), for which it gives a 1-tuple that
    MLflow cannot log as a number. The handler gets that tuple's one value instead.
    """
    for handler in handlers:
        if type(handler).__name__ == "MLFlowHandler":  # by name: mlflow is an optional dependency
            handler.output_transform = _SingleValue(handler.output_transform)
    return handlers


class _SingleValue:
    def __init__(self, transform):
        self.transform = transform

    def __call__(self, output):
        value = self.transform(output)
        return value[0] if isinstance(value, tuple) and len(value) == 1 else value
