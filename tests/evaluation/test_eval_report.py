"""`cit report`: a self-contained HTML page with every figure, checked in headless Chromium."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from toolkit.cli import main as cit
from toolkit.evaluation.calibration import load_temperature

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CLASSES = ["normal", "pneumonia"]


def _write_predictions(
    path: Path, images: list[Path], labels: np.ndarray, probs: np.ndarray, patients: list[str]
):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["image", "patient_id", "label", "label_name", "pred", "pred_name"]
            + [f"prob_{c}" for c in CLASSES]
        )
        for img, y, p, pid in zip(images, labels, probs, patients, strict=True):
            k = int(p.argmax())
            w.writerow([str(img), pid, int(y), CLASSES[y], k, CLASSES[k]] + [f"{v:.6f}" for v in p])


def _images(folder: Path, n: int, rng) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        arr = (rng.random((48, 48)) * 80).astype(np.uint8)
        arr[12 + i % 20 : 24 + i % 20, 10:30] += 120  # a bright blob that moves
        paths.append(folder / f"img{i:03d}.png")
        Image.fromarray(arr).save(paths[-1])
    return paths


def _overconfident(labels: np.ndarray, rng) -> np.ndarray:
    """Probabilities from noisy logits made four times too sharp (so calibration has work to do)."""
    logits = np.stack([np.zeros(len(labels)), 1.5 * (2 * labels - 1) + rng.normal(0, 1.5, len(labels))], 1)
    e = np.exp(4 * logits - (4 * logits).max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _write_bundle(bundle: Path) -> None:
    """A minimal bundle: inference.json with the ids `load_bundle` reads, random resnet18 weights and the
    model description training writes beside them."""
    from toolkit.bundle import write_model_info

    (bundle / "configs").mkdir(parents=True)
    info = write_model_info(
        bundle / "models",
        network={"name": "resnet18", "num_classes": 2, "in_channels": 3},
        class_names=CLASSES,
        preprocessing={"image_size": 64, "channels": 3, "intensity": "imagenet", "resize_mode": "bilinear"},
    )
    torch.manual_seed(0)
    torch.save(info.create_network().state_dict(), bundle / "models" / "model.pt")
    config = {
        "imports": ["$import toolkit", "$import toolkit.bundle"],
        "bundle_root": str(bundle),
        "ckpt_path": "$@bundle_root + '/models/model.pt'",
        "model_info": "$toolkit.bundle.load_model_info(@ckpt_path)",
        "class_names": "$@model_info.class_names",
        "network": "$@model_info.create_network()",
        "preprocessing": "$@model_info.preprocessing_transforms(label_key=None)",
    }
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def run_dir(module_tmp) -> tuple[Path, Path]:
    """A bundle (random resnet18 weights) and its output folder: test + validation predictions, history."""
    root = module_tmp("run")
    rng = np.random.default_rng(0)
    bundle = root / "bundle"
    _write_bundle(bundle)

    out = root / "output"
    test_labels = np.array([0, 1] * 20)
    _write_predictions(
        out / "eval" / "predictions.csv",
        _images(root / "img_test", 40, rng),
        test_labels,
        _overconfident(test_labels, rng),
        [f"p{i // 2}" for i in range(40)],
    )
    val_labels = np.array([0, 1] * 100)
    _write_predictions(
        out / "eval_validation" / "predictions.csv",
        _images(root / "img_val", 200, rng),
        val_labels,
        _overconfident(val_labels, rng),
        [f"v{i}" for i in range(200)],
    )
    (out / "train").mkdir()
    with open(out / "train" / "training_history.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"])
        for e in range(1, 6):
            w.writerow([e, 1 / e, 1 - 0.5 / e, 1.2 / e, 1 - 0.6 / e, 1e-3])
    return bundle, out


def test_report_end_to_end(run_dir):
    bundle, out = run_dir
    # a hand-written bundle is foreign code to the toolkit: trusted here explicitly
    code = cit(
        [
            "report",
            "--eval-dir",
            str(out / "eval"),
            "--bundle",
            str(bundle),
            "--n-resamples",
            "200",
            "--save-temperature",
            "--n-cam",
            "2",
            "--trust-bundle",
        ]
    )
    assert code == 0
    report_dir = out / "eval" / "report"
    summary = json.loads((report_dir / "report.json").read_text())
    assert summary["warnings"] == []
    names = {Path(p).name for p in summary["figures"]}
    assert names == {
        "training_curves.png",
        "reliability.png",
        "confusion_matrix.png",
        "roc.png",
        "precision_recall.png",
        "samples.png",
        "gradcam.png",
    }
    for p in summary["figures"]:
        assert Image.open(p).size[0] > 300
    # every figure is embedded; nothing is fetched from elsewhere
    page = (report_dir / "report.html").read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(embedded) == len(names)
    assert all(base64.b64decode(e)[:8] == b"\x89PNG\r\n\x1a\n" for e in embedded)
    assert not re.search(r'(src|href)="(https?:|//|file:)', page)
    # metrics carry intervals; patients (2 images each) are the resampling unit
    metrics = json.loads((report_dir / "metrics.json").read_text())
    assert metrics["bootstrap"]["unit"] == "patient" and metrics["bootstrap"]["num_units"] == 20
    ci = metrics["confidence_intervals"]["accuracy"]
    assert ci["low"] <= metrics["accuracy"] <= ci["high"]
    # temperature fitted on validation (the probabilities are 4x too sharp), ECE lowered, saved
    cal = summary["calibration"]
    assert 2.0 < cal["temperature"] < 8.0 and cal["ece_after"] < cal["ece_before"]
    assert (
        cal["intervals"]["ece_before"]["low"] <= cal["ece_before"] <= cal["intervals"]["ece_before"]["high"]
    )
    assert load_temperature(bundle / "models" / "temperature.json") == pytest.approx(cal["temperature"])
    # operating point of the binary task, chosen on validation
    point = summary["operating_points"]["pneumonia"]
    assert point["validation"]["sensitivity"] >= 0.9 and 0 <= point["test"]["specificity"] <= 1


def test_report_without_bundle_or_validation_says_what_is_missing(run_dir, tmp_path):
    _, out = run_dir
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    shutil.copy(out / "eval" / "predictions.csv", eval_dir)
    audit = tmp_path / "audit.json"  # the part of `cit audit`'s output the report shows
    audit.write_text(
        json.dumps(
            {
                "leakage": {
                    "found": True,
                    "counts_by_split_pair": {"training|test": {"exact_duplicate_pairs": 3}},
                    "images_with_a_copy_in_another_split": {"training": 3, "test": 3},
                }
            }
        )
    )
    assert cit(["report", "--eval-dir", str(eval_dir), "--n-resamples", "50", "--audit", str(audit)]) == 0
    page = (eval_dir / "report" / "report.html").read_text()
    assert "leakage found" in page and "3 test images have an exact or near copy" in page
    summary = json.loads((eval_dir / "report" / "report.json").read_text())
    assert summary["calibration"]["temperature"] is None
    assert any("training history" in w for w in summary["warnings"])
    assert any("--bundle" in w for w in summary["warnings"])
    assert "gradcam.png" not in {Path(p).name for p in summary["figures"]}


def test_save_temperature_needs_validation(run_dir, tmp_path):
    bundle, out = run_dir
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    shutil.copy(out / "eval" / "predictions.csv", eval_dir)
    with pytest.raises(ValueError, match="validation predictions"):
        cit(["report", "--eval-dir", str(eval_dir), "--bundle", str(bundle), "--save-temperature"])


def test_bad_predictions_file_is_named(tmp_path):
    (tmp_path / "predictions.csv").write_text("image,label,prob_a,prob_b\nx.png,zero,0.1,0.9\n")
    with pytest.raises(ValueError, match=r"predictions.csv, line 2"):
        cit(["report", "--eval-dir", str(tmp_path), "--n-resamples", "10"])


def test_html_renders_in_chromium(run_dir, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing (Debian package `chromium`)")
    _, out = run_dir
    html = out / "eval" / "report" / "report.html"
    if not html.exists():
        cit(["report", "--eval-dir", str(out / "eval"), "--n-resamples", "50", "--n-cam", "0"])
    flags = CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    dom = subprocess.run(
        [str(CHROMIUM), *flags, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    n_figures = len(re.findall(r"<figure", html.read_text()))
    # the page's own check: every <img> decoded with a non-zero width
    assert f'data-figures="{n_figures}"' in dom.stdout and 'data-figures-broken="0"' in dom.stdout
    shot = tmp_path / "report.png"
    run = subprocess.run(
        [str(CHROMIUM), *flags, "--window-size=1280,6000", f"--screenshot={shot}", html.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    # figures drawn: plenty of non-background pixels well down the page, not a blank or error page
    assert (pixels[1000:5000] < 200).mean() > 0.05


# ---------------------------------------------------------------------------------------------
# calibration: the fitted temperature, and Grad-CAM handed over by the caller


def _write_exact_predictions(path: Path, labels: np.ndarray, probs: np.ndarray, names: list[str]) -> None:
    """predictions.csv with full-precision probabilities (log p of tiny ones must survive the round trip)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "patient_id", "label"] + [f"prob_{c}" for c in names])
        for i, (y, p) in enumerate(zip(labels, probs, strict=True)):
            w.writerow([f"img{i}.png", f"p{i}", int(y)] + [repr(float(v)) for v in p])


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("true_temperature", [0.6, 2.5])
def test_fitted_temperature_is_within_10_percent_of_the_true_one(tmp_path, true_temperature):
    """Labels drawn from softmax(z); the model's logits are T * z, so dividing them by T calibrates them."""
    from toolkit.evaluation.report import build_report

    rng = np.random.default_rng(3)
    names = ["a", "b", "c"]
    for split, n in (("eval", 600), ("eval_validation", 3000)):
        z = rng.normal(0, 1.5, (n, 3))
        labels = np.array([rng.choice(3, p=p) for p in _softmax(z)])
        _write_exact_predictions(
            tmp_path / split / "predictions.csv", labels, _softmax(true_temperature * z), names
        )
    temperature_file = tmp_path / "models" / "temperature.json"
    temperature_file.parent.mkdir()
    temperature_file.write_text('{"temperature": 2.0}')  # the predictions were made with T = 2 already
    summary = build_report(
        tmp_path / "eval", n_resamples=20, n_grid=0, n_cam=0, temperature_file=temperature_file
    )
    cal = summary["calibration"]
    assert abs(cal["temperature"] - true_temperature) / true_temperature < 0.10, cal["temperature"]
    assert cal["ece_after"] < cal["ece_before"]
    assert load_temperature(temperature_file) == pytest.approx(2.0 * cal["temperature"])  # composed
    assert summary["warnings"] == [
        f"No training history at {tmp_path / 'train' / 'training_history.csv'}: learning curves are left out."
    ]


@pytest.fixture(scope="module")
def model(run_dir):
    """The run's bundle, loaded the way `cit report --bundle` does."""
    from toolkit.bundle import load_bundle
    from toolkit.evaluation.gradcam import ExplainableModel

    loaded = load_bundle(run_dir[0], trust=True)  # hand-written: foreign code, trusted here
    return ExplainableModel(loaded.network, loaded.preprocessing, loaded.class_names)


def _small_eval_dir(run_dir, tmp_path: Path, n: int = 6) -> tuple[Path, list[str]]:
    """An eval folder with the first ``n`` test predictions (right and wrong ones)."""
    _, out = run_dir
    with open(out / "eval" / "predictions.csv", newline="") as f:
        rows = list(csv.reader(f))
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    with open(eval_dir / "predictions.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows[: n + 1])
    return eval_dir, [r[0] for r in rows[1 : n + 1]]


def test_a_failing_gradcam_panel_is_a_warning_with_the_reason(run_dir, model, tmp_path):
    from toolkit.evaluation.report import build_report

    eval_dir, images = _small_eval_dir(run_dir, tmp_path)
    moved = tmp_path / "moved.png"
    Path(images[1]).rename(moved)  # an image moved away since the predictions were made
    try:
        summary = build_report(eval_dir, model=model, n_resamples=20, n_cam=10, n_grid=0)
    finally:
        moved.rename(images[1])
    skips = [w for w in summary["warnings"] if w.startswith("Grad-CAM skips")]
    assert len(skips) == 1 and images[1] in skips[0]
    assert (
        "no such file" in skips[0].lower()
        or "not found" in skips[0].lower()
        or "does not exist" in skips[0].lower()
    )
    assert (eval_dir / "report" / "gradcam.png").is_file()  # the other five are explained
    assert "Grad-CAM skips" in (eval_dir / "report" / "report.html").read_text()


def test_a_model_that_does_not_fit_is_a_warning_not_a_crash(run_dir, model, tmp_path):
    from toolkit.evaluation.gradcam import ExplainableModel
    from toolkit.evaluation.report import build_report

    eval_dir, _ = _small_eval_dir(run_dir, tmp_path)
    other = ExplainableModel(model.network, model.preprocessing, ["cat", "dog"])
    summary = build_report(eval_dir, model=other, n_resamples=20, n_cam=2, n_grid=0)
    assert any(
        w.startswith("Grad-CAM overlays could not be made: ValueError") and "differ" in w
        for w in summary["warnings"]
    )
    assert (
        not (eval_dir / "report" / "gradcam.png").exists() and (eval_dir / "report" / "report.html").is_file()
    )


def test_a_programming_error_in_the_preprocessing_is_not_hidden(run_dir, model, tmp_path):
    """A preprocessing that forgets to load the image (returns the path) is a bug, not a bad image."""
    from toolkit.evaluation.gradcam import ExplainableModel
    from toolkit.evaluation.report import build_report

    eval_dir, _ = _small_eval_dir(run_dir, tmp_path)
    broken = ExplainableModel(model.network, lambda data: data, model.class_names)
    with pytest.raises(TypeError, match="invalid data type 'str'"):
        build_report(eval_dir, model=broken, n_resamples=20, n_cam=2, n_grid=0)


def test_cit_report_with_a_bundle_that_does_not_load_still_reports(run_dir, tmp_path, capsys):
    eval_dir, _ = _small_eval_dir(run_dir, tmp_path)
    bundle = tmp_path / "bundle"
    shutil.copytree(run_dir[0] / "configs", bundle / "configs")  # configs but no trained model
    args = ["report", "--eval-dir", str(eval_dir), "--bundle", str(bundle), "--n-resamples", "20"]
    assert cit([*args, "--trust-bundle"]) == 0
    summary = json.loads((eval_dir / "report" / "report.json").read_text())
    (warning,) = [w for w in summary["warnings"] if "Grad-CAM" in w]
    assert warning.startswith(f"Grad-CAM overlays could not be made: the bundle {bundle} did not load:")
    assert "model_info.json" in warning or "model.pt" in warning
    assert f"note: {warning}" in capsys.readouterr().out


def test_report_reads_the_checkpoint_folder_it_is_given_and_strict_fails_on_warnings(run_dir, tmp_path):
    import shutil

    bundle, out = run_dir
    elsewhere = tmp_path / "trained_elsewhere"
    shutil.copytree(bundle / "models", elsewhere)
    eval_dir = tmp_path / "eval"
    shutil.copytree(out / "eval", eval_dir, ignore=shutil.ignore_patterns("report"))
    args = [
        "report",
        "--eval-dir",
        str(eval_dir),
        "--bundle",
        str(bundle),
        "--n-resamples",
        "50",
        "--n-cam",
        "1",
        "--validation-predictions",
        str(out / "eval_validation" / "predictions.csv"),
        "--history",
        str(out / "train" / "training_history.csv"),
        "--trust-bundle",
    ]
    assert cit([*args, "--ckpt-dir", str(elsewhere), "--strict"]) == 0
    assert (eval_dir / "report" / "gradcam.png").is_file()
    # a checkpoint folder without weights: the report is still written, the reason said, --strict fails
    empty = tmp_path / "no_weights"
    empty.mkdir()
    assert cit([*args, "--ckpt-dir", str(empty)]) == 0
    summary = json.loads((eval_dir / "report" / "report.json").read_text())
    assert any(
        "did not load" in w and "model weights not found" in w
        for w in summary["warnings"] + summary.get("notes", [])
    )
    assert cit([*args, "--ckpt-dir", str(empty), "--strict"]) == 1
