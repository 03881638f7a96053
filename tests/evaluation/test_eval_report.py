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
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
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
    info = write_model_info(bundle / "models", network={"name": "resnet18", "num_classes": 2, "in_channels": 3},
                            class_names=CLASSES, preprocessing={"image_size": 64, "channels": 3,
                                                                "intensity": "imagenet", "resize_mode": "bilinear"})  # fmt: skip
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
def run_dir(tmp_path_factory) -> tuple[Path, Path]:
    """A bundle (random resnet18 weights) and its output folder: test + validation predictions, history."""
    root = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    bundle = root / "bundle"
    _write_bundle(bundle)

    out = root / "output"
    test_labels = np.array([0, 1] * 20)
    _write_predictions(out / "eval" / "predictions.csv", _images(root / "img_test", 40, rng), test_labels,
                       _overconfident(test_labels, rng), [f"p{i // 2}" for i in range(40)])  # fmt: skip
    val_labels = np.array([0, 1] * 100)
    _write_predictions(out / "eval_validation" / "predictions.csv", _images(root / "img_val", 200, rng), val_labels,
                       _overconfident(val_labels, rng), [f"v{i}" for i in range(200)])  # fmt: skip
    (out / "train").mkdir()
    with open(out / "train" / "training_history.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"])
        for e in range(1, 6):
            w.writerow([e, 1 / e, 1 - 0.5 / e, 1.2 / e, 1 - 0.6 / e, 1e-3])
    return bundle, out


def test_report_end_to_end(run_dir):
    bundle, out = run_dir
    code = cit(["report", "--eval-dir", str(out / "eval"), "--bundle", str(bundle), "--n-resamples", "200",
                "--save-temperature", "--n-cam", "2"])  # fmt: skip
    assert code == 0
    report_dir = out / "eval" / "report"
    summary = json.loads((report_dir / "report.json").read_text())
    assert summary["warnings"] == []
    names = {Path(p).name for p in summary["figures"]}
    assert names == {"training_curves.png", "reliability.png", "confusion_matrix.png", "roc.png",
                     "precision_recall.png", "samples.png", "gradcam.png"}  # fmt: skip
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
    audit.write_text(json.dumps({"leakage": {
        "found": True, "counts_by_split_pair": {"training|test": {"exact_duplicate_pairs": 3}},
        "images_with_a_copy_in_another_split": {"training": 3, "test": 3}}}))  # fmt: skip
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
    dom = subprocess.run([str(CHROMIUM), *flags, "--dump-dom", html.as_uri()], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert dom.returncode == 0, dom.stderr[-2000:]
    n_figures = len(re.findall(r"<figure", html.read_text()))
    # the page's own check: every <img> decoded with a non-zero width
    assert f'data-figures="{n_figures}"' in dom.stdout and 'data-figures-broken="0"' in dom.stdout
    shot = tmp_path / "report.png"
    run = subprocess.run([str(CHROMIUM), *flags, "--window-size=1280,6000", f"--screenshot={shot}", html.as_uri()],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    # figures drawn: plenty of non-background pixels well down the page, not a blank or error page
    assert (pixels[1000:5000] < 200).mean() > 0.05
