"""End to end: the ChestX-ray14 bundles (multi-scale ResNet and the four baselines) on a tiny
ChestX-ray14-shaped folder the test writes (NIH CSV, several images per patient, 'No Finding' rows),
run as users run them, then checked the way other tools load them (verify_metadata / verify_net_in_out)."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from tests.bundles.bundle_helpers import REPO_ROOT, run_bundle, verify_bundle
from tests.data.test_chestxray14_splits import write_chestxray14
from toolkit.cli import main
from toolkit.data import load_datalist
from toolkit.data.sources import CHESTXRAY14_FINDINGS

TINY = {"max_epochs": 2, "batch_size": 4, "early_stopping": 1, "pretrained_fallback": "warn"}


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def multiscale(module_tmp):
    tmp = module_tmp("multiscale")
    csv_path = write_chestxray14(tmp / "cxr", image_size=40)
    run_bundle(
        "multiscale_resnet_cxr14",
        "training",
        "train",
        tmp,
        dataset_dir=csv_path,
        model_name="multiscale_resnet18",
        image_size=32,
        **TINY,
    )
    run_bundle("multiscale_resnet_cxr14", "evaluating", "evaluate", tmp)
    return tmp


@pytest.mark.slow
def test_multiscale_trains_multi_label_and_selects_by_mean_auroc(multiscale):
    info = json.loads((multiscale / "models" / "model_info.json").read_text())
    assert info["multi_label"] is True and info["class_names"] == CHESTXRAY14_FINDINGS
    assert info["network"]["name"] == "multiscale_resnet18" and info["network"]["scales"] == [1.0, 0.5, 0.25]
    history = _rows(multiscale / "output" / "train" / "training_history.csv")
    assert history and all(r["val_mean_auroc"] and r["val_loss"] for r in history)
    doc = load_datalist(multiscale / "output" / "datalist.json")
    patients = [{i["patient_id"] for i in doc[k]} for k in ("training", "validation", "test")]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])


@pytest.mark.slow
def test_multiscale_evaluation_uses_thresholds_chosen_on_validation(multiscale):
    eval_dir = multiscale / "output" / "eval"
    doc = load_datalist(multiscale / "output" / "datalist.json")
    chosen = json.loads((multiscale / "models" / "thresholds.json").read_text())["thresholds"]
    assert list(chosen) == CHESTXRAY14_FINDINGS
    assert len(_rows(eval_dir / "validation_predictions.csv")) == len(doc["validation"])
    rows = _rows(eval_dir / "predictions.csv")
    assert sorted(r["image"] for r in rows) == sorted(i["image"] for i in doc["test"])
    for row in rows:  # the predicted findings are those at or above their own threshold
        flags = [int(float(row[f"prob_{f}"]) >= chosen[f]) for f in CHESTXRAY14_FINDINGS]
        assert row["pred"] == "|".join(map(str, flags))
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert metrics["task"] == "multi_label" and set(metrics["per_class"]) == set(CHESTXRAY14_FINDINGS)
    assert metrics["threshold"] == pytest.approx([chosen[f] for f in CHESTXRAY14_FINDINGS])
    verify_bundle("multiscale_resnet_cxr14", multiscale / "models")


@pytest.mark.slow
def test_cit_infer_calls_each_finding_at_its_threshold(multiscale, tmp_path, capsys):
    """No override: the model's description and thresholds travel with its weights."""
    doc = load_datalist(multiscale / "output" / "datalist.json")
    chosen = json.loads((multiscale / "models" / "thresholds.json").read_text())["thresholds"]
    code = main(
        [
            "infer",
            "--bundle",
            str(REPO_ROOT / "bundles" / "multiscale_resnet_cxr14"),
            "--ckpt-path",
            str(multiscale / "models" / "model.pt"),
            "--input",
            str(multiscale / "cxr" / "images"),
            "--output",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    rows = _rows(tmp_path / "out" / "predictions.csv")
    assert len(rows) == sum(len(doc[k]) for k in ("training", "validation", "test"))
    for row in rows:
        flags = [int(float(row[f"prob_{f}"]) >= chosen[f]) for f in CHESTXRAY14_FINDINGS]
        assert row["status"] == "ok" and row["pred"] == "|".join(map(str, flags))
        assert row["pred_name"] == "|".join(f for f, v in zip(CHESTXRAY14_FINDINGS, flags, strict=True) if v)
    # thresholds chosen again (a new evaluation) change the rows: the old output is not resumed with them
    models = tmp_path / "models"
    shutil.copytree(multiscale / "models", models)
    thresholds = json.loads((models / "thresholds.json").read_text())
    thresholds["thresholds"] = {f: 0.123 for f in thresholds["thresholds"]}
    (models / "thresholds.json").write_text(json.dumps(thresholds))
    code = main(
        [
            "infer",
            "--bundle",
            str(REPO_ROOT / "bundles" / "multiscale_resnet_cxr14"),
            "--ckpt-path",
            str(models / "model.pt"),
            "--input",
            str(multiscale / "cxr" / "images"),
            "--output",
            str(tmp_path / "out"),
        ]
    )
    assert code == 5 and "thresholds [" in capsys.readouterr().err


# each baseline at the smallest input its architecture takes (Inception v3 needs 75 px)
BASELINES = {"vgg16_cls": 32, "inception_v3_cls": 75, "densenet121_cls": 32, "efficientnet_b0_cls": 32}
# VGG's 4096-wide 7x7 pre-logits layer alone is 100M parameters (1.6 GB per checkpoint with Adam's
# state); a narrow one keeps the test's disk and time small and still exercises model_kwargs
MODEL_KWARGS = {"vgg16_cls": {"mlp_ratio": 0.01}}


@pytest.mark.slow
@pytest.mark.parametrize("bundle", list(BASELINES))
def test_baseline_bundle_trains_and_verifies(tmp_path, bundle):
    csv_path = write_chestxray14(tmp_path / "cxr", image_size=BASELINES[bundle])
    run_bundle(
        bundle,
        "training",
        "train",
        tmp_path,
        dataset_dir=csv_path,
        image_size=BASELINES[bundle],
        model_kwargs=MODEL_KWARGS.get(bundle, {}),
        **{**TINY, "max_epochs": 1},
    )
    info = json.loads((tmp_path / "models" / "model_info.json").read_text())
    assert info["network"]["name"] == bundle.removesuffix("_cls") and info["multi_label"] is True
    assert MODEL_KWARGS.get(bundle, {}).items() <= info["network"].items()  # consumers rebuild this net
    verify_bundle(bundle, tmp_path / "models")
