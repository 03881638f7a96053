"""Key metric, early stopping and the multi-label loss, on real ignite / MONAI engines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from sklearn.metrics import roc_auc_score

from toolkit.engines import early_stopping, key_metrics
from toolkit.engines.monitoring import mean_auroc


def test_mean_auroc_leaves_out_findings_with_one_outcome():
    labels = torch.tensor([[1, 0, 0], [0, 0, 1], [1, 0, 0], [0, 0, 1]])
    logits = torch.tensor([[2.0, 0.1, -1.0], [-1.0, 0.3, 0.5], [0.5, 0.2, 0.0], [0.7, 0.4, 1.0]])
    expected = np.mean(
        [roc_auc_score(labels[:, k], logits[:, k]) for k in (0, 2)]
    )  # finding 1 has no positive
    assert mean_auroc(logits, labels) == pytest.approx(expected)
    assert mean_auroc(logits, torch.zeros_like(labels)) == 0.5


def _evaluate(metrics: dict, outputs: list[dict]) -> dict:
    engine = Engine(lambda e, batch: batch)
    for name, metric in metrics.items():
        metric.attach(engine, name)
    return engine.run(outputs).metrics


def test_key_metric_follows_the_task():
    single = key_metrics("val", multi_label=False)
    out = _evaluate(single, [{"pred": torch.tensor([[2.0, 0.0], [0.0, 1.0]]), "label": torch.tensor([0, 0])}])
    assert out == {"val_accuracy": 0.5}
    multi = key_metrics("val", multi_label=True)
    batch = {
        "pred": torch.tensor([[2.0, -1.0], [-1.0, 1.0], [0.5, 0.0]]),
        "label": torch.tensor([[1, 0], [0, 1], [0, 0]]),
    }
    assert list(_evaluate(multi, [batch])) == ["val_mean_auroc"]
    assert _evaluate(multi, [batch])["val_mean_auroc"] == pytest.approx(1.0)


def test_early_stopping_stops_the_trainer_on_validation_loss():
    losses = iter([1.0, 0.8, 0.9, 0.85, 0.95, 0.7])  # best at validation 2, then 2 worse ones
    validator = Engine(lambda e, b: None)

    @validator.on(Events.EPOCH_COMPLETED)
    def _loss(engine):
        engine.state.metrics["val_loss"] = next(losses)

    trainer = Engine(lambda e, b: None)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: validator.run([0]))
    for handler in early_stopping(2, trainer):
        handler.attach(validator)
    trainer.run([0], max_epochs=6)
    assert trainer.state.epoch == 4  # validations 3 and 4 did not improve on 0.8
    assert early_stopping(None, trainer) == [] and early_stopping(0, trainer) == []


def test_multi_label_loss_handles_rows_with_no_finding():
    """BCE with positive weights (components.json#loss#per_task) on a batch whose rows include 'No Finding'."""
    from toolkit.data import class_weights

    items = [{"label": [1, 0, 0]}, {"label": [0, 0, 0]}, {"label": [0, 0, 0]}, {"label": [1, 1, 0]}]
    pos_weight = torch.tensor(class_weights(items, 3, multi_label=True))
    assert pos_weight.tolist() == [1.0, 3.0, 1.0]  # negatives / positives; 1 for a finding never seen
    logits = torch.tensor([[0.3, -0.2, 0.1], [-1.0, 0.5, 2.0], [0.0, 0.0, 0.0], [1.5, -0.5, -1.0]])
    labels = torch.tensor([item["label"] for item in items], dtype=torch.float32)
    loss = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)(logits, labels)
    p = torch.sigmoid(logits)
    by_hand = -(pos_weight * labels * torch.log(p) + (1 - labels) * torch.log(1 - p)).mean()
    assert torch.isfinite(loss) and loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
