"""The bundles' Ignite handlers, driven by real Ignite engines over known predictions."""

import csv
import json

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

from toolkit.bundle import PredictionWriter, TrainingHistoryWriter
from toolkit.engines import to_probabilities

CLASSES = ["glioma", "meningioma", "pituitary"]
# 6 images: true labels and the probabilities a model gave them (argmax: 0,1,2,0,2,1)
LABELS = [0, 1, 2, 0, 1, 2]
PROBS = torch.tensor(
    [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.3, 0.2], [0.3, 0.3, 0.4], [0.2, 0.5, 0.3]]
)


def _run_writer(tmp_path, batch_size=4):
    records = [
        {"image": f"/data/img{i}.dcm", "label": y, "patient_id": f"p{i // 2}"} for i, y in enumerate(LABELS)
    ]
    batches = [
        {"index": torch.arange(s, min(s + batch_size, len(LABELS)))}
        for s in range(0, len(LABELS), batch_size)
    ]

    def step(engine, batch):
        return {"pred": PROBS[batch["index"]]}

    engine = Engine(step)
    PredictionWriter(tmp_path, CLASSES, records, write_metrics=True).attach(engine)
    engine.run(batches)
    return records


def test_prediction_writer_rows_and_metrics_match_hand_computed(tmp_path):
    records = _run_writer(tmp_path)
    with open(tmp_path / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == [r["image"] for r in records]
    assert [int(r["pred"]) for r in rows] == [0, 1, 2, 0, 2, 1]
    assert [r["pred_name"] for r in rows] == [
        "glioma",
        "meningioma",
        "pituitary",
        "glioma",
        "pituitary",
        "meningioma",
    ]
    assert [r["patient_id"] for r in rows] == ["p0", "p0", "p1", "p1", "p2", "p2"]
    assert float(rows[4]["prob_pituitary"]) == pytest.approx(0.4)

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    # 4 of 6 right; meningioma: 1 of 2 found, 1 of 2 predicted right -> P = R = 0.5
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["per_class"]["meningioma"]["precision"] == pytest.approx(0.5)
    assert metrics["per_class"]["meningioma"]["recall"] == pytest.approx(0.5)
    assert metrics["per_class"]["glioma"]["recall"] == pytest.approx(1.0)
    assert metrics["confusion_matrix"] == [[2, 0, 0], [0, 1, 1], [0, 1, 1]]
    assert (tmp_path / "confusion_matrix.csv").is_file()


def test_prediction_writer_does_not_depend_on_batching(tmp_path):
    _run_writer(tmp_path / "a", batch_size=1)
    _run_writer(tmp_path / "b", batch_size=5)
    assert (tmp_path / "a" / "predictions.csv").read_text() == (
        tmp_path / "b" / "predictions.csv"
    ).read_text()


def test_prediction_writer_keeps_the_probabilities_of_a_confident_model(tmp_path):
    """Saturated softmax outputs differ only beyond six decimals: the file must keep them apart, or AUROC
    computed from it (as `cit compare` does) ties them and falls."""
    from sklearn.metrics import roc_auc_score

    gaps = torch.tensor([-20.0, -18.0, -16.0, -15.0, 14.6, 15.0, 15.5, 16.0])
    labels = [0, 1, 0, 1, 0, 1, 0, 1]
    probs = torch.softmax(torch.stack([-gaps / 2, gaps / 2], dim=1), dim=1)  # float32
    records = [{"image": f"/data/{i}.png", "label": y} for i, y in enumerate(labels)]
    engine = Engine(lambda e, batch: {"pred": probs[batch["index"]]})
    PredictionWriter(tmp_path, ["normal", "pneumonia"], records).attach(engine)
    engine.run([{"index": torch.arange(8)}])

    with open(tmp_path / "predictions.csv") as f:
        written = np.array([float(r["prob_pneumonia"]) for r in csv.DictReader(f)])
    assert np.array_equal(written.astype(np.float32), probs[:, 1].numpy())  # float32 round trip
    assert len(set(written)) == 8
    assert (
        roc_auc_score(labels, written) == roc_auc_score(labels, probs[:, 1].numpy()) == 0.625
    )  # six decimals: 0.5


def _history_run(path, epochs, start_epoch=0):
    """A trainer-like engine with an optimizer whose lr halves every epoch and a validator."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    validator = Engine(lambda e, b: None)
    trainer = Engine(lambda e, b: None)
    trainer.state.metrics = {}

    @trainer.on(Events.EPOCH_COMPLETED)
    def _metrics(engine):
        engine.state.metrics.update(train_loss=1.0 / engine.state.epoch, train_accuracy=0.5)
        validator.state.metrics = {
            "val_loss": 2.0 / engine.state.epoch,
            "val_accuracy": 0.25 * engine.state.epoch,
        }

    TrainingHistoryWriter(validator, path, optimizer).attach(trainer)

    @trainer.on(Events.EPOCH_COMPLETED)
    def _step_lr(engine):
        for group in optimizer.param_groups:
            group["lr"] *= 0.5

    if start_epoch:
        trainer.state.epoch = start_epoch
        trainer.state.iteration = start_epoch
        trainer.state.max_epochs = epochs

        @trainer.on(Events.STARTED)
        def _restore(engine):
            engine.state.epoch = start_epoch
            engine.state.iteration = start_epoch
            for group in optimizer.param_groups:
                group["lr"] = 0.1 * 0.5**start_epoch

    trainer.run([0], max_epochs=epochs)


def test_training_history_has_one_row_per_epoch_and_survives_resume(tmp_path):
    path = tmp_path / "train" / "training_history.csv"
    _history_run(path, epochs=2)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[1]["val_accuracy"]) == pytest.approx(0.5)
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.1, 0.05])
    _history_run(path, epochs=3, start_epoch=2)  # resumed run adds epoch 3, keeps 1-2
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[2]["lr"]) == pytest.approx(0.025)


def test_to_probabilities_temperature_and_multilabel():
    logits = torch.tensor([[2.0, 0.0, -2.0]])
    p1 = to_probabilities(logits)
    p2 = to_probabilities(logits, temperature=2.0)
    assert torch.allclose(p1.sum(-1), torch.ones(1))
    assert p2[0, 0] < p1[0, 0]  # a higher temperature softens the distribution
    assert np.allclose(to_probabilities(logits, multi_label=True).numpy(), torch.sigmoid(logits).numpy())


def test_multi_label_writer_thresholds_each_finding_and_names_the_positives(tmp_path):
    findings = ["Atelectasis", "Effusion", "Nodule"]
    labels = [[1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 1, 0]]
    probs = torch.tensor([[0.9, 0.2, 0.1], [0.4, 0.7, 0.6], [0.1, 0.3, 0.2], [0.8, 0.4, 0.5]])
    records = [{"image": f"/cxr/{i}.png", "label": y} for i, y in enumerate(labels)]
    engine = Engine(lambda e, batch: {"pred": probs[batch["index"]]})
    PredictionWriter(tmp_path, findings, records, write_metrics=True, multi_label=True).attach(engine)
    engine.run([{"index": torch.arange(0, 3)}, {"index": torch.arange(3, 4)}])
    with open(tmp_path / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == ["1|0|0", "0|1|1", "0|0|0", "1|1|0"]
    assert [r["pred"] for r in rows] == ["1|0|0", "0|1|1", "0|0|0", "1|0|1"]  # threshold 0.5 per finding
    assert [r["pred_name"] for r in rows] == ["Atelectasis", "Effusion|Nodule", "", "Atelectasis|Nodule"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["num_samples"] == 4 and metrics["threshold"] == 0.5
