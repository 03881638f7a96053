"""`cit compare` end to end on tiny synthetic data: real bundle runs (subprocesses, as users run them).

Four models on one split of 40 synthetic "patients" (2 images each, horizontal vs vertical stripes, a
task ResNet-18 learns in one epoch at 32 px): the ResNet-18 bundle trained by the command, the same
bundle with a bad override (fails at training), and two already-trained models written with the
toolkit's own functions: a constant-output network trained "on" the shared split (it must come out
significantly worse) and one whose training split differs (it must be refused).
"""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from toolkit.bundle import datalist_for, write_model_info
from toolkit.cli import main

RATIOS = "training=0.5,validation=0.1,test=0.4"
TINY = [
    "--max_epochs",
    "2",
    "--image_size",
    "32",
    "--batch_size",
    "8",
    "--pretrained",
    "None",
    "--learning_rate",
    "0.001",
]
BUNDLE = "resnet18_brain_ct"


def _stripes(folder, n_patients=40, per_patient=2, size=40, seed=0):
    """PNG images of horizontal or vertical stripes (random period and phase, noise) + labels.csv."""
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True)
    rows = []
    for p in range(n_patients):
        label = ("horizontal", "vertical")[p % 2]
        for k in range(per_patient):
            yy, xx = np.mgrid[0:size, 0:size]
            coord = yy if label == "horizontal" else xx
            wave = np.sin(2 * np.pi * coord / rng.uniform(6, 12) + rng.uniform(0, 2 * np.pi))
            pixels = np.clip(0.5 + 0.35 * wave + rng.normal(0, 0.15, (size, size)), 0, 1)
            name = f"img/p{p:02d}_{k}.png"
            Image.fromarray((pixels * 255).astype(np.uint8)).save(folder / name)
            rows.append([name, label, f"p{p:02d}"])
    with open(folder / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image", "label", "patient_id"], *rows])
    return folder / "labels.csv"


def _constant_model(folder, split_source):
    """An already-trained model as a training run leaves it (models/ + output/datalist.json), trained
    on ``split_source``, whose network outputs the same logits for every image."""
    datalist = datalist_for(split_source, folder / "output")  # what training with --dataset_dir writes
    info = write_model_info(
        folder / "models",
        network={"name": "resnet18", "num_classes": 2, "in_channels": 3},
        class_names=["horizontal", "vertical"],
        preprocessing={
            "image_size": 32,
            "reader_max_size": 32,
            "channels": 3,
            "colour": "grey",
            "intensity": "imagenet",
        },
        datalist_file=datalist,
        bundle_name=BUNDLE,
    )
    network = info.create_network()
    with torch.no_grad():
        network.fc.weight.zero_()
        network.fc.bias.copy_(torch.tensor([1.0, 0.0]))  # always "horizontal"
    torch.save(network.state_dict(), folder / "models" / "model.pt")
    return folder / "models"


def _compare(out, labels, models, *extra):
    return main(
        [
            "compare",
            "--dataset-dir",
            str(labels),
            "--out",
            str(out),
            "--ratios",
            RATIOS,
            "--n-resamples",
            "300",
            *models,
            *extra,
            "--",
            *TINY,
        ]
    )


@pytest.fixture(scope="module")
def compared(module_tmp):
    tmp = module_tmp("compare")
    mp = pytest.MonkeyPatch()
    mp.setenv("OMP_NUM_THREADS", "1")  # the bundle runs inherit it
    mp.setenv("CIT_WEIGHTS_DIR", str(tmp / "weights"))
    labels = _stripes(tmp / "data")
    out = tmp / "out"
    shared = datalist_for(labels, out, seed=0, ratios=RATIOS)  # the split `cit compare` builds (and keeps)
    constant = _constant_model(tmp / "constant", shared)
    other = datalist_for(labels, tmp / "other_split", seed=1, ratios=RATIOS)
    elsewhere = _constant_model(tmp / "elsewhere", other)
    models = [
        "--model",
        BUNDLE,
        "--model",
        f"broken={BUNDLE}",
        "--set",
        "broken:model_name=no_such_net",
        "--trained",
        f"constant={constant}",
        "--trained",
        f"elsewhere={elsewhere}",
    ]
    code = _compare(out, labels, models)
    yield {"tmp": tmp, "out": out, "labels": labels, "constant": constant, "code": code}
    mp.undo()


def _rows(out):
    with open(out / "comparison.csv", newline="") as f:
        return {r["model"]: r for r in csv.DictReader(f)}


@pytest.mark.slow
def test_one_row_per_model_and_failures_listed_while_the_others_go_on(compared):
    out = compared["out"]
    assert compared["code"] == 3  # some models failed
    rows = _rows(out)
    assert list(rows) == [BUNDLE, "broken", "constant", "elsewhere"]
    assert [rows[m]["status"] for m in rows] == ["ok", "failed", "ok", "failed"]
    broken = rows["broken"]
    assert broken["stage"] == "training" and "no_such_net" in broken["error"]
    assert "no_such_net" in (out / "runs" / "broken" / "train.log").read_text() and broken["log"].endswith(
        "train.log"
    )
    assert rows["elsewhere"]["stage"] == "split check" and "another split" in rows["elsewhere"]["error"]
    table = (out / "comparison.md").read_text()
    for name in rows:
        assert f"| {name}" in table
    # every bundle run used the one split: the trained model's split holds the shared images
    info = json.loads((out / "runs" / BUNDLE / "models" / "model_info.json").read_text())
    run_split = json.loads((out / "runs" / BUNDLE / "output" / "datalist.json").read_text())
    assert info["split_fingerprint"] == run_split["split_fingerprint"]
    assert run_split["split_spec"]["source"] == str(out / "datalist.json")


@pytest.mark.slow
def test_intervals_contain_the_estimates_and_the_constant_model_is_significantly_worse(compared):
    doc = json.loads((compared["out"] / "comparison.json").read_text())
    result = doc["comparison"]
    assert result["test_set"]["num_images"] == 32 and result["test_set"]["unit"] == "patient"
    for model in result["models"].values():
        for name, value in model["metrics"].items():
            assert model["intervals"][name]["low"] <= value <= model["intervals"][name]["high"], name
    assert result["reference"] == BUNDLE
    constant = result["comparisons"]["constant"]
    assert result["models"]["constant"]["metrics"]["auroc"] == 0.5  # one score for every image
    assert constant["accuracy"]["verdict"] == "worse" and constant["accuracy"]["p_holm"] < 0.05
    assert constant["auroc"]["verdict"] == "worse" and constant["auroc"]["test"] == "paired bootstrap"
    # the metrics come from the predictions: the same numbers the bundle's own evaluation wrote
    own = json.loads((compared["out"] / "runs" / BUNDLE / "eval" / "metrics.json").read_text())
    assert result["models"][BUNDLE]["metrics"]["accuracy"] == pytest.approx(own["accuracy"])
    # log files hold plain lines: no progress-bar frames (carriage returns) of MONAI's dataset caching
    train_log = (compared["out"] / "runs" / BUNDLE / "train.log").read_text()
    assert "Loading dataset" not in train_log and "\r" not in train_log


@pytest.mark.slow
def test_rerun_with_reuse_trains_and_evaluates_nothing_again(compared):
    out = compared["out"]
    before = json.loads((out / "comparison.json").read_text())["comparison"]["models"][BUNDLE]["metrics"]
    logs = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/*.log")}
    code = _compare(
        out,
        compared["labels"],
        ["--model", BUNDLE, "--trained", f"constant={compared['constant']}"],
        "--reuse",
    )
    assert code == 0
    doc = json.loads((out / "comparison.json").read_text())
    assert [m["reused"] for m in doc["models"]] == [["training", "evaluation"], ["evaluation"]]
    assert doc["comparison"]["models"][BUNDLE]["metrics"] == before
    assert {p: p.stat().st_mtime_ns for p in logs} == logs  # no run wrote its log again


def test_bad_command_lines_stop_before_any_run(tmp_path, capsys):
    labels = _stripes(tmp_path / "data", n_patients=4, per_patient=1)
    base = ["compare", "--dataset-dir", str(labels), "--out", str(tmp_path / "out"), "--model", BUNDLE]
    assert main([*base, "--", "--ckpt_dir", "x"]) == 2
    assert "--ckpt_dir is set by `cit compare`" in capsys.readouterr().err
    assert main([*base, "--set", "nobody:max_epochs=1"]) == 2
    assert "no model named 'nobody'" in capsys.readouterr().err
    assert main([*base, "--model", "no_such_bundle"]) == 2
    assert "no bundle 'no_such_bundle'" in capsys.readouterr().err
    assert main([*base, "--model", BUNDLE]) == 2
    assert "given twice: ['resnet18_brain_ct']" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # not even the split was built


def test_a_trained_model_whose_split_cannot_be_checked_is_a_row_not_a_crash(tmp_path):
    labels = _stripes(tmp_path / "data", n_patients=10, per_patient=1)
    write_model_info(
        tmp_path / "lonely" / "models",
        {"name": "resnet18", "num_classes": 2, "in_channels": 3},
        ["horizontal", "vertical"],
        {"image_size": 32},
        bundle_name=BUNDLE,
    )
    out = tmp_path / "out"
    code = _compare(out, labels, ["--trained", f"lonely={tmp_path / 'lonely' / 'models'}"])
    assert code == 1  # no model could be scored
    row = _rows(out)["lonely"]
    assert (row["status"], row["stage"]) == ("failed", "split check")
    assert "records no split fingerprint" in row["error"]
    assert "nothing to compare" in (out / "comparison.md").read_text()
    assert _compare(out, labels, ["--model", f"../up={BUNDLE}"]) == 2  # a name that would leave --out/runs


def test_the_recipe_digest_follows_configs_and_the_code_a_bundle_run_executes(tmp_path, monkeypatch):
    from toolkit.studies import compare

    package, bundle = tmp_path / "toolkit", tmp_path / "bundles" / "b"
    files = {
        "transforms": package / "transforms" / "chains.py",
        "cli": package / "cli" / "infer.py",
        "inference": package / "inference" / "runner.py",
        "bundle config": bundle / "configs" / "train.json",
        "base config": tmp_path / "configs" / "base" / "common.json",
    }
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("one")
    monkeypatch.setattr(compare, "PACKAGE", package)
    for name, path in files.items():
        before = compare.recipe_digest(bundle)
        path.write_text(path.read_text() + " more")
        changed = compare.recipe_digest(bundle) != before
        assert changed == (name not in ("cli", "inference")), name  # the layers above bundle runs
    # a record made before the code was part of the recipe (no "recipe") is never reused
    (tmp_path / "run.json").write_text(
        json.dumps({"training": {"command": ["x"], "configs": "y", "returncode": 0}})
    )
    assert not compare._reusable(tmp_path, "training", ["x"], compare.recipe_digest(bundle), [])


def test_an_override_names_an_earlier_models_weights_and_their_hash_joins_the_recipe(tmp_path):
    """``{model:teacher}`` (a distillation student's teacher_ckpt) becomes the weights the teacher trained
    in this comparison; other weights give another digest (the student is retrained), and a model that is
    not trained yet, or the model itself, is refused naming the file."""
    from toolkit.studies.compare import Comparison, _fill_model_references

    comparison = Comparison(tmp_path, tmp_path / "datalist.json", [])
    weights = tmp_path / "runs" / "teacher" / "models" / "model.pt"
    weights.parent.mkdir(parents=True)
    torch.save({"w": torch.zeros(2)}, weights)
    filled, first = _fill_model_references(["--teacher_ckpt", "{model:teacher}"], comparison, "student")
    assert filled == ["--teacher_ckpt", str(weights)] and len(first) == 1
    torch.save({"w": torch.ones(2)}, weights)
    assert _fill_model_references(["{model:teacher}"], comparison, "student")[1] != first
    assert _fill_model_references(["--max_epochs", "2"], comparison, "student") == (["--max_epochs", "2"], [])
    for reference, name in (("{model:other}", "student"), ("{model:teacher}", "teacher")):
        with pytest.raises(FileNotFoundError, match="so that it is trained first"):
            _fill_model_references([reference], comparison, name)
