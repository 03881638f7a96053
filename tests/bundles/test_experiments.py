"""The reproducible experiments behind docs/results.md (toolkit.studies.experiments and
scripts/reproduce_results.py): a tiny experiment run end to end with real bundle runs, the
PneumoniaMNIST rebuild, and the table logic on hand-made summaries."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from tests.bundles.bundle_helpers import REPO_ROOT
from tests.bundles.test_compare import _stripes
from tests.conftest import load_script
from toolkit.data import load_datalist
from toolkit.studies import experiments, results_doc


def _script():
    return load_script("reproduce_results")


def test_the_repositorys_experiments_are_well_formed():
    specs = experiments.load_experiments()
    kinds = [s["kind"] for s in specs.values()]
    assert kinds == sorted(kinds, key=lambda k: k != "pretrain")  # pretraining runs first
    pretrains = {n for n, s in specs.items() if s["kind"] == "pretrain"}
    for name, spec in specs.items():
        assert (REPO_ROOT / "bundles" / spec["bundle"] / "configs" / "train.json").is_file(), name
        if spec["kind"] == "pretrain":
            continue
        for arm in spec["arms"].values():
            for value in map(str, arm.values()):
                assert set(experiments.BACKBONE.findall(value)) <= pretrains, (name, value)
        for published in spec.get("published", []):
            assert published["source"] and set(published) - {"source"} <= set(results_doc.METRICS), name


@pytest.mark.slow
def test_a_tiny_experiment_runs_each_fraction_and_writes_the_doc(tmp_path, monkeypatch):
    labels = _stripes(tmp_path / "data" / "stripes", n_patients=40)
    with open(labels, newline="") as f:
        rows = list(csv.DictReader(f))
    flagged = {r["image"] for r in rows[::5]}  # every fifth image "flagged" as a near-duplicate
    with open(tmp_path / "data" / "flags.csv", "w", newline="") as f:
        csv.writer(f).writerows(
            [["file", "dup"], *[[f"stripes/{r['image']}", int(r["image"] in flagged)] for r in rows]]
        )
    spec = {
        "kind": "classification",
        "title": "Stripes",
        "data": {"source": "stripes/labels.csv", "ratios": "training=0.5,validation=0.1,test=0.4"},
        "split_note": "random by patient",
        "positive": "vertical",
        "bundle": "resnet18_brain_ct",
        "overrides": {"max_epochs": 2, "image_size": 32, "batch_size": 8, "pretrained": "False"},
        "arms": {"scratch": {}, "fast": {"learning_rate": 0.01}},
        "label_fractions": [0.5, 1.0],
        "seeds": [0],
        "test_subsets": {
            "unflagged": {"csv": "flags.csv", "file_column": "file", "drop_where": {"dup": "1"}}
        },
        "published": [{"source": "a made-up paper", "accuracy": 0.99}],
        "time_to_accuracy": {"fraction": 1.0, "seeds": [0], "targets": [0.5, 1.01]},
    }
    out = tmp_path / "runs"
    summary = experiments.run_classification("stripes", spec, out, tmp_path / "data")

    full, half = (
        {r["fraction"]: r for r in summary["runs"]}[1.0],
        {r["fraction"]: r for r in summary["runs"]}[0.5],
    )
    assert (
        half["images"]["test"] == full["images"]["test"]
        and half["images"]["validation"] == full["images"]["validation"]
    )
    assert half["images"]["training"] < full["images"]["training"]
    subset = load_datalist(out / "stripes" / "labels50_seed0" / "labels.json")
    everything = load_datalist(summary["datalist"])
    assert {i["image"] for i in subset["training"]} < {i["image"] for i in everything["training"]}
    assert {i["patient_id"] for i in subset["training"]}.isdisjoint(
        i["patient_id"] for i in everything["test"]
    )

    for run in summary["runs"]:
        assert set(run["arms"]) == {"scratch", "fast"} and run["paired"]["reference"] in run["arms"]
        for name, arm in run["arms"].items():
            with open(
                out
                / "stripes"
                / f"labels{round(run['fraction'] * 100)}_seed0"
                / "runs"
                / name
                / "eval"
                / "predictions.csv",
                newline="",
            ) as f:
                preds = list(csv.DictReader(f))
            assert arm["accuracy"] == pytest.approx(np.mean([p["label"] == p["pred"] for p in preds]))
            assert arm["accuracy_ci"][0] <= arm["accuracy"] <= arm["accuracy_ci"][1]
            assert arm["sensitivity"] == pytest.approx(
                np.mean([p["pred"] == p["label"] for p in preds if p["label_name"] == "vertical"])
            )
            unflagged = [p for p in preds if not any(p["image"].endswith(i) for i in flagged)]
            assert run["subsets"]["unflagged"]["images"] == len(unflagged) < len(preds)
            assert run["subsets"]["unflagged"]["arms"][name]["accuracy"] == pytest.approx(
                np.mean([p["label"] == p["pred"] for p in unflagged])
            )

    for name, epochs in full["time_to_accuracy"].items():  # each epoch's checkpoint, tested after training
        models = out / "stripes" / "labels100_seed0" / "runs" / name / "models"
        assert [e["epoch"] for e in epochs] == [1, 2] and 0 < epochs[0]["train_cpu_minutes"] < epochs[1][
            "train_cpu_minutes"
        ]
        assert not (models / "checkpoint_epoch=1.pt").exists() and (models / "checkpoint_epoch=2.pt").exists()
        for e in epochs:
            metrics = json.loads(
                (models.parent / "epochs" / f"epoch{e['epoch']}" / "metrics.json").read_text()
            )
            assert e["accuracy"] == metrics["accuracy"]
    assert "time_to_accuracy" not in half
    lines = "\n".join(results_doc.time_to_accuracy_lines(summary))
    assert "101.0%: not reached in" in lines and lines.count("`scratch`") == 1

    monkeypatch.setattr(experiments, "load_experiments", lambda names=(): {"stripes": spec})
    doc = _script().render({"stripes": spec}, out)
    assert doc.count("| Stripes (") == 2  # one published-figure row per arm trained on all labels
    assert "a made-up paper" in doc and "no: accuracy" in doc or "| yes |" in doc
    assert "### Stripes" in doc and "Test set unflagged:" in doc and "| 50 % |" in doc
    assert "## Time to accuracy: Stripes" in doc

    again = experiments.run_classification("stripes", spec, out, tmp_path / "data")  # nothing retrained
    record = json.loads((out / "stripes" / "labels100_seed0" / "runs" / "scratch" / "run.json").read_text())
    assert again["runs"][1]["arms"]["scratch"]["train_seconds"] == record["training"]["seconds"]
    assert again["runs"][1]["arms"]["scratch"]["accuracy"] == full["arms"]["scratch"]["accuracy"]

    assert "made with other configs or toolkit code" not in doc
    record["training"]["recipe"] = "an earlier one"  # as if the toolkit had changed since this run
    (out / "stripes" / "labels100_seed0" / "runs" / "scratch" / "run.json").write_text(json.dumps(record))
    doc = _script().render({"stripes": spec}, out)
    assert "**1 of its 4 runs made with other configs or toolkit code than this checkout**" in doc
    assert (
        "**Made with an earlier recipe than this checkout** (configs or toolkit code" in doc
        and "`stripes`." in doc
    )


def _npz(path, train, train_labels, val=(), test=()):
    np.savez(
        path,
        train_images=np.array(train, dtype=np.uint8),
        train_labels=np.array(train_labels),
        val_images=np.array(val or [np.zeros((2, 2))], dtype=np.uint8),
        val_labels=np.array([0] * len(val or [0])),
        test_images=np.array(test or [np.ones((2, 2))], dtype=np.uint8),
        test_labels=np.array([1] * len(test or [0])),
    )


def test_pneumoniamnist_rebuild_is_the_union_of_the_training_sets_and_keeps_the_second_copys_eval(tmp_path):
    folder = tmp_path / "medmnist"
    folder.mkdir()
    a, b, c = (np.full((2, 2), v) for v in (10, 20, 30))
    _npz(folder / "pneumoniamnist_balanced_subset.npz", [a, b], [0, 1])
    _npz(
        folder / "pneumoniamnist_normal_subsampled_train.npz", [b, c], [[1], [1]], val=[a, b, c], test=[c, c]
    )
    out = experiments.rebuild_pneumoniamnist(tmp_path, tmp_path / "rebuilt.npz")
    data = np.load(out)
    assert [int(x[0, 0]) for x in data["train_images"]] == [10, 20, 30] and list(data["train_labels"]) == [
        0,
        1,
        1,
    ]
    assert len(data["val_images"]) == 3 and len(data["test_images"]) == 2 and data["test_labels"].ndim == 1

    _npz(folder / "pneumoniamnist_normal_subsampled_train.npz", [b], [0])  # same image, other label
    with pytest.raises(ValueError, match="two labels"):
        experiments.rebuild_pneumoniamnist(tmp_path, tmp_path / "rebuilt.npz")


def test_a_backbone_placeholder_needs_its_pretraining_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="ssl_pool"):
        experiments._fill_backbones("{backbone:ssl_pool}", tmp_path)
    (tmp_path / "ssl_pool" / "models").mkdir(parents=True)
    (tmp_path / "ssl_pool" / "models" / "backbone.pt").write_bytes(b"x")
    assert experiments._fill_backbones("{backbone:ssl_pool}", tmp_path) == str(
        tmp_path / "ssl_pool" / "models" / "backbone.pt"
    )


def _arm(accuracy, low, high, auroc=0.5):
    return {"accuracy": accuracy, "accuracy_ci": [low, high], "auroc": auroc, "auroc_ci": [None, None]}


def test_the_verdict_compares_the_difference_of_seed_means_with_the_scratch_ci_width():
    runs = [
        {
            "fraction": 0.1,
            "seed": s,
            "images": {"training": 10},
            "subsets": {},
            "paired": None,
            "arms": {"scratch": _arm(0.5, 0.45, 0.55), "simclr": _arm(acc, acc - 0.05, acc + 0.05)},
        }
        for s, acc in ((0, 0.62), (1, 0.64))
    ] + [
        {
            "fraction": 1.0,
            "seed": s,
            "images": {"training": 100},
            "subsets": {},
            "paired": None,
            "arms": {"scratch": _arm(0.8, 0.7, 0.9), "simclr": _arm(0.85, 0.8, 0.9)},
        }
        for s in (0, 1)
    ]
    summary = {"spec": {"arms": {"scratch": {}, "simclr": {}}}, "runs": runs}
    low, full = results_doc.efficiency(summary)
    assert low["versus"]["simclr"]["difference"] == pytest.approx(0.13)
    assert low["scratch_ci_width"] == pytest.approx(0.1)
    assert low["versus"]["simclr"]["beats_by_more_than_ci_width"]
    assert not full["versus"]["simclr"]["beats_by_more_than_ci_width"]
    # a third arm gets its own difference and verdict against scratch, in its own columns
    for run in runs:
        run["arms"]["imagenet"] = _arm(0.4, 0.35, 0.45)
    summary["spec"]["arms"]["imagenet"] = {}
    low, _ = results_doc.efficiency(summary)
    assert low["versus"]["imagenet"]["difference"] == pytest.approx(-0.1)
    table = results_doc.efficiency_table(summary)
    assert "difference of means (imagenet)" in table[0] and "imagenet more than the CI width?" in table[0]
    assert all(line.count("|") == table[0].count("|") for line in table)
    assert table[2].endswith("| +0.130 | -0.100 | 0.100 | yes | no |")
    assert (
        results_doc.reached({"accuracy": 0.93, "auroc": 0.97}, {"accuracy": 0.928, "auroc": 0.968}) == "yes"
    )
    assert results_doc.reached({"accuracy": 0.90, "auroc": 0.97}, {"accuracy": 0.928}).startswith(
        "no: accuracy 0.900"
    )


def test_a_published_entry_without_figures_gives_a_row_with_nothing_to_reach():
    arm = {**_arm(0.9, 0.85, 0.95), "status": "ok", "epochs": 5, "train_cpu_seconds": 60.0}
    summary = {
        "spec": {
            "title": "Three classes",
            "published": [{"source": "no comparable figure in the references"}],
        },
        "runs": [{"fraction": 1.0, "seed": 0, "images": {"test": 30}, "arms": {"imagenet": arm}}],
    }
    header, _, row = results_doc.published_table([summary])
    assert row.count("|") == header.count("|")
    assert row.endswith("| none (no comparable figure in the references) | - |")
    assert "| 0.900 [0.850, 0.950] |" in row


def test_scored_findings_need_enough_positive_and_negative_test_images():
    y = np.zeros((20, 4), dtype=int)
    y[:5, 0] = 1  # 5 positives, 15 negatives: scored
    y[:4, 1] = 1  # 4 positives: left out
    y[:16, 2] = 1  # 16 positives, 4 negatives: left out
    y[:15, 3] = 1  # 15 positives, 5 negatives: scored
    assert experiments.scored_findings(y).tolist() == [True, False, False, True]


def _multi_label_eval(folder, y, probs, thresholds):
    folder.mkdir(parents=True)
    names = ["Effusion", "Hernia", "Mass"]
    with open(folder / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "patient_id", "label", *(f"prob_{c}" for c in names)])
        for i, (labels, p) in enumerate(zip(y, probs, strict=True)):
            w.writerow([f"img{i}.png", f"p{i // 2}", "|".join(map(str, labels)), *p])
    (folder / "metrics.json").write_text(json.dumps({"threshold": thresholds}))


def test_a_multi_label_experiment_is_scored_on_the_findings_with_enough_test_images(tmp_path):
    """Hernia (1 positive) is left out; the mean AUROC is over Effusion and Mass, each model keeps its own
    thresholds for the findings scored."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = np.zeros((40, 3), dtype=int)
    y[rng.choice(40, 12, replace=False), 0] = 1
    y[3, 1] = 1
    y[rng.choice(40, 9, replace=False), 2] = 1
    probs = {n: np.clip(0.6 * y + rng.uniform(0, 0.6, y.shape), 0, 1) for n in ("a", "b")}
    dirs = {n: tmp_path / n for n in probs}
    _multi_label_eval(dirs["a"], y, probs["a"], [0.3, 0.5, 0.7])
    _multi_label_eval(dirs["b"], y, probs["b"], [0.4, 0.5, 0.6])
    result, left_out = experiments._multi_label_result(dirs, seed=0)
    assert left_out == ["Hernia"]
    assert result["test_set"]["class_names"] == ["Effusion", "Mass"]
    for name, p in probs.items():
        expected = np.mean([roc_auc_score(y[:, k], p[:, k]) for k in (0, 2)])
        assert result["models"][name]["metrics"]["auroc"] == pytest.approx(expected, abs=1e-6)
    assert result["models"]["a"]["threshold"] == [0.3, 0.7]
    assert result["models"]["b"]["threshold"] == [0.4, 0.6]
    row = experiments._arm_metrics(result["models"]["a"], None, multi_label=True)
    assert row["accuracy"] is None and row["auroc"] == result["models"]["a"]["metrics"]["auroc"]


def test_a_multi_label_test_set_too_small_for_the_rule_scores_every_finding(tmp_path):
    y = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]])
    probs = np.clip(0.5 * y + 0.25, 0, 1)
    _multi_label_eval(tmp_path / "a", y, probs, [0.5, 0.5, 0.5])
    result, left_out = experiments._multi_label_result({"a": tmp_path / "a"}, seed=0)
    assert left_out == []
    assert result["test_set"]["class_names"] == ["Effusion", "Hernia", "Mass"]
