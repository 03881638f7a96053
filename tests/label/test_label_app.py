"""The MONAI Label app in label/ serves an exported bundle: `monailabel start_server` on 127.0.0.1,
`/info/` lists the model with the trained class names, and `/infer` on a real image returns the class
scores that `cit infer` gives for the same image.

Needs the MONAI Label virtualenv (`bash label/setup_env.sh`, default label/.venv or $CIT_LABEL_VENV);
without it the whole module is skipped before anything is trained, so the default test run pays nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.bundles.bundle_helpers import REPO_ROOT, run_bundle

LABEL_VENV = Path(os.environ.get("CIT_LABEL_VENV", REPO_ROOT / "label" / ".venv"))
MONAILABEL = LABEL_VENV / "bin" / "monailabel"
if not MONAILABEL.is_file():
    pytest.skip(
        f"MONAI Label virtualenv not found ({MONAILABEL} missing): create it with `bash label/setup_env.sh`",
        allow_module_level=True,
    )

BUNDLE = "resnet18_brain_ct"
INT8 = f"{BUNDLE}_int8"  # the same exported bundle with a checked int8 ONNX export of its weights
CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
# |MONAI Label score - cit infer probability| (predictions.jsonl, unrounded): the same weights,
# preprocessing and float32 CPU arithmetic in two processes and two virtualenvs with the same torch,
# batch of 1 against a batch of 2; measured here: at most 6e-8
TOLERANCE = 1e-5
TO_LABEL: dict[str, str] = {}  # image id -> class name, filled by the `exported` fixture
STARTUP_TIMEOUT = 600  # seconds; the server imports torch + MONAI and builds the network on a busy 2-core box


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(
    url: str,
    data: bytes | None = None,
    timeout: float = 300,
    method: str | None = None,
    content_type: str = "application/x-www-form-urlencoded",
):
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"))
    if data is not None:
        req.add_header("Content-Type", content_type)
    with urllib.request.urlopen(req, timeout=timeout) as response:
        return json.loads(response.read())


def _save_label(base: str, image_id: str, class_name: str):
    """`PUT /datastore/label` as a client saves a classification label: a small text file naming the
    class, and the same name in the label's params (either is enough for the train task)."""
    boundary = "cit-label-test-boundary"
    parts = [
        ("label", 'filename="label.txt"', "text/plain", class_name),
        ("params", None, "application/json", json.dumps({"label": class_name})),
    ]
    body = b""
    for name, filename, ctype, value in parts:
        disposition = f'form-data; name="{name}"' + (f"; {filename}" if filename else "")
        body += (
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {ctype}\r\n\r\n{value}\r\n"
        ).encode()
    body += f"--{boundary}--\r\n".encode()
    query = urllib.parse.urlencode({"image": image_id, "tag": "final"})
    return _request(
        f"{base}/datastore/label?{query}",
        data=body,
        method="PUT",
        content_type=f"multipart/form-data; boundary={boundary}",
    )


@pytest.fixture(scope="module")
def exported(module_tmp, shared_data):
    """A bundle trained for one epoch on 4 real brain-MRI classes, exported as MONAI Label loads it, and a
    copy of it (INT8) with an int8 ONNX export of the same weights."""
    tmp = module_tmp("label")
    source = shared_data / "brain_tumor_mri_224"
    data = tmp / "data"
    for name in CLASSES:  # a few real images per class, linked (nothing copied)
        (data / name).mkdir(parents=True)
        for path in sorted((source / "Training" / name).glob("*.jpg"))[:4]:
            (data / name / path.name).symlink_to(path)
    run_bundle(
        BUNDLE,
        "training",
        "train",
        tmp,
        dataset_dir=data,
        max_epochs=1,
        image_size=32,
        batch_size=4,
        pretrained=None,
    )
    bundles = tmp / "bundles"
    export = subprocess.run(
        [
            sys.executable,
            "-m",
            "toolkit",
            "export",
            "--bundle",
            f"bundles/{BUNDLE}",
            "--ckpt-dir",
            str(tmp / "models"),
            "--format",
            "bundle",
            "--out",
            str(bundles / BUNDLE),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert export.returncode == 0, export.stderr[-3000:]
    shutil.copytree(bundles / BUNDLE, bundles / INT8)
    # the guard is not what is tested here: a 1-epoch model on a few validation images passes any bound
    int8 = subprocess.run(
        [
            sys.executable,
            "-m",
            "toolkit",
            "export",
            "--bundle",
            f"bundles/{BUNDLE}",
            "--format",
            "onnx",
            "--int8",
            "--ckpt-dir",
            str(bundles / INT8 / "models"),
            "--output-dir",
            str(tmp / "output"),
            "--max-auroc-drop",
            "1",
            "--min-agreement",
            "0",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert int8.returncode == 0, int8.stderr[-3000:]
    studies = tmp / "studies"  # MONAI Label writes its datastore index here: a folder of its own
    studies.mkdir()
    queries = tmp / "queries"  # the images /infer is asked about, alone in a folder for `cit infer`
    queries.mkdir()
    for name in ("glioma", "notumor"):
        image = sorted((source / "Testing" / name).glob("*.jpg"))[0]
        shutil.copy(image, studies / image.name)
        shutil.copy(image, queries / image.name)
    for name in CLASSES:  # images a user labels for the train task (other ones than the first training's)
        for image in sorted((source / "Training" / name).glob("*.jpg"))[4:8]:
            shutil.copy(image, studies / image.name)
            TO_LABEL[image.stem] = name
    return tmp, bundles, studies, queries


@pytest.fixture(scope="module")
def server(exported):
    tmp, bundles, studies, queries = exported
    port = _free_port()
    # the README's command, in an environment with no virtualenv on PATH (as in a fresh shell)
    command = [
        str(LABEL_VENV / "bin" / "python"),
        "-m",
        "monailabel.main",
        "start_server",
        "--app",
        str(REPO_ROOT / "label"),
        "--studies",
        str(studies),
        "--conf",
        "models",
        f"{BUNDLE},{INT8}",
        "--conf",
        "bundles_dir",
        str(bundles),
        "--conf",
        "train",
        "true",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    log = open(tmp / "server.log", "w")  # noqa: SIM115 (closed below)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": os.environ.get("HOME", str(tmp)),
        "MONAI_LABEL_TASKS_SCORING": "false",
        "OMP_NUM_THREADS": "1",
    }
    process = subprocess.Popen(
        command, cwd=tmp, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"monailabel exited with {process.returncode}:\n{(tmp / 'server.log').read_text()[-4000:]}"
                )
            try:
                info = _request(f"{base}/info/", timeout=10)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"monailabel did not answer in {STARTUP_TIMEOUT} s:\n{(tmp / 'server.log').read_text()[-4000:]}"
                    )
                time.sleep(2)
        yield base, info, queries
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # the server and the workers it started, nothing else
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
        log.close()


def _cit_infer(bundle: Path, images: Path, out: Path) -> dict[str, tuple[str, list[float]]]:
    """`cit infer --backend auto` on the CPU: {file name: (backend, probabilities)}."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "toolkit",
            "infer",
            "--bundle",
            str(bundle),
            "--input",
            str(images),
            "--output",
            str(out),
            "--device",
            "cpu",
            "--backend",
            "auto",
            "--workers",
            "0",
            "--no-progress",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines() if line.strip()]
    return {
        Path(r["path"]).name: (r["backend"], [r[f"prob_{c}"] for c in CLASSES])
        for r in rows
        if r["status"] == "ok"
    }


def test_info_lists_the_bundle_with_its_trained_classes(server):
    _, info, _ = server
    model = info["models"][BUNDLE]
    assert model["type"] == "classification"
    assert model["class_names"] == list(CLASSES)
    assert model["labels"] == {name: i for i, name in enumerate(CLASSES)}
    assert BUNDLE in info["trainers"]


def test_infer_returns_the_scores_of_cit_infer(server, exported, tmp_path):
    base, _, queries = server
    bundles = exported[1]
    _infer_equals_cit_infer(base, bundles / BUNDLE, queries, tmp_path / "cit")


def _infer_equals_cit_infer(
    base: str, bundle: Path, queries: Path, out: Path, backend: str = "pytorch", params: dict | None = None
):
    """`/infer` of the bundle served as ``bundle.name`` runs the ``backend`` that `cit infer --backend auto`
    runs, gives its scores and names that backend."""
    expected = _cit_infer(bundle, queries, out)
    assert len(expected) == 2
    for name, (cit_backend, probs) in expected.items():
        image_id = Path(
            name
        ).stem  # MONAI Label's local datastore names an image by its file name without extension
        query = urllib.parse.urlencode({"image": image_id, "output": "json"})
        body = urllib.parse.urlencode({"params": json.dumps(params or {})}).encode()
        result = _request(f"{base}/infer/{bundle.name}?{query}", data=body)
        scores = [p["score"] for p in sorted(result["prediction"], key=lambda p: p["idx"])]
        assert [p["label"] for p in sorted(result["prediction"], key=lambda p: p["idx"])] == list(CLASSES)
        np.testing.assert_allclose(scores, probs, rtol=0, atol=TOLERANCE, err_msg=name)
        assert result["predicted"] == CLASSES[int(np.argmax(probs))]
        assert abs(sum(scores) - 1) < 1e-5
        assert result["backend"] == cit_backend == backend


def test_infer_on_the_cpu_runs_the_checked_int8_export(server, exported, tmp_path):
    """On a CPU the task runs the bundle's checked int8 export, as `cit infer --backend auto` does: the same
    scores, and the result names the backend."""
    base, _, queries = server
    bundle = exported[1] / INT8
    _infer_equals_cit_infer(base, bundle, queries, tmp_path / "cit", "onnxruntime-int8", {"device": "cpu"})


def test_train_on_datastore_labels_then_infer_serves_the_new_weights(server, exported, tmp_path):
    """Labels saved through the datastore API are mapped to the model's class indices, the bundle's own
    recipe trains on them, and the server then answers with the new weights."""
    base, _, queries = server
    bundle = exported[1] / BUNDLE
    for image_id, class_name in TO_LABEL.items():
        _save_label(base, image_id, class_name.upper() if class_name == "notumor" else class_name)  # any case
    assert _request(f"{base}/info/")["datastore"]["label_tags"] == {"final": len(TO_LABEL)}
    before = (bundle / "models" / "model.pt").read_bytes()
    result = _request(
        f"{base}/train/{BUNDLE}?run_sync=true",
        data=json.dumps({"max_epochs": 1, "batch_size": 4}).encode(),
        content_type="application/json",
        timeout=900,
    )
    assert result["images"] == len(TO_LABEL) == 16
    datalist = json.loads((Path(result["run"]) / "output" / "datalist.json").read_text())
    assert datalist["labels"] == list(CLASSES)
    for item in datalist["training"] + datalist["validation"] + datalist["test"]:
        assert item["label"] == CLASSES.index(
            TO_LABEL[Path(item["image"]).name.split("_", 1)[1].rsplit(".", 1)[0]]
        )
    assert (bundle / "models" / "model.pt").read_bytes() != before
    stats = _request(f"{base}/info/")["train_stats"][BUNDLE]  # what the Label UI shows after training
    assert stats["run"] == Path(result["run"]).name and stats["epochs"] == 1 and stats["best_epoch"] == 1
    assert stats["best_metric_name"] == "val_accuracy" and 0.0 <= stats["best_metric"] <= 1.0
    assert stats["training_seconds"] > 0
    _infer_equals_cit_infer(base, bundle, queries, tmp_path / "cit")
