"""A trained bundle describes itself: `cit infer`, the bundle's own inference and `cit export` use a
model trained with another architecture, input size and class count than the bundle's defaults,
with no override repeated; its portable copy loads outside the repository as MONAI's tools load it."""

import contextlib
import io
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest

from tests.bundles.bundle_helpers import REPO_ROOT, run_bundle
from toolkit.cli import main
from toolkit.data import load_datalist, make_synthetic_dataset

BUNDLE = "resnet18_brain_ct"
BUNDLE_DIR = REPO_ROOT / "bundles" / BUNDLE
CLASSES = ("glioma", "meningioma", "notumor", "pituitary")  # the bundle's metadata says 3 classes


@pytest.fixture(scope="module")
def trained(module_tmp):
    tmp = module_tmp("described")
    datalist = make_synthetic_dataset(
        tmp / "data", n_patients=12, images_per_patient=2, image_size=48, seed=4, classes=CLASSES
    )
    run_bundle(
        BUNDLE,
        "training",
        "train",
        tmp,
        dataset_dir=datalist,
        max_epochs=1,
        image_size=40,
        model_name="resnet34d",
        batch_size=4,
        pretrained=None,
    )
    inputs = tmp / "inputs"
    for n, item in enumerate(load_datalist(datalist)["test"]):
        inputs.mkdir(exist_ok=True)
        shutil.copy(item["image"], inputs / f"img{n}{'.dcm' if item['image'].endswith('.dcm') else '.png'}")
    return tmp, inputs


@dataclass
class CitRun:
    returncode: int
    stdout: str
    stderr: str


def _cit(*args) -> CitRun:
    """`cit ARGS` in this process (as a user's shell would run it, without the interpreter start-up)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse errors
            code = int(exit_.code or 0)
    return CitRun(code, out.getvalue(), err.getvalue())


def _probs(path, key):
    import csv

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {r[key].rsplit("/", 1)[-1]: [float(r[k]) for k in r if k.startswith("prob_")] for r in rows}


@pytest.mark.slow
def test_cit_infer_needs_no_override_and_equals_the_bundle(trained, tmp_path):
    tmp, inputs = trained
    ckpt = tmp / "models" / "model.pt"
    result = _cit(
        "infer",
        "--bundle",
        str(BUNDLE_DIR),
        "--ckpt-path",
        str(ckpt),
        "--input",
        str(inputs),
        "--output",
        str(tmp_path / "cit"),
        "--device",
        "cpu",
        "--no-progress",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_bundle(BUNDLE, "inference", "inference", tmp, dataset_dir=inputs, inference_dir=tmp_path / "bundle")
    ours, theirs = (
        _probs(tmp_path / "cit" / "predictions.csv", "path"),
        _probs(tmp_path / "bundle" / "predictions.csv", "image"),
    )
    assert set(ours) == set(theirs) and len(ours) >= 2
    for name in ours:
        np.testing.assert_allclose(ours[name], theirs[name], atol=2e-6, err_msg=name)


@pytest.mark.slow
def test_contradicting_override_or_missing_description_is_a_clear_error(trained, tmp_path):
    tmp, inputs = trained
    ckpt = tmp / "models" / "model.pt"
    base = [
        "infer",
        "--bundle",
        str(BUNDLE_DIR),
        "--input",
        str(inputs),
        "--device",
        "cpu",
        "--no-progress",
    ]
    result = _cit(*base, "--ckpt-path", str(ckpt), "--output", str(tmp_path / "a"), "--set", "image_size=64")
    assert result.returncode != 0 and "image_size=64 (trained with 40)" in result.stderr + result.stdout
    bare = tmp_path / "weights_only"
    bare.mkdir()
    shutil.copy(ckpt, bare / "model.pt")
    result = _cit(*base, "--ckpt-path", str(bare / "model.pt"), "--output", str(tmp_path / "b"))
    assert result.returncode != 0 and "model_info.json is missing" in result.stderr + result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torchscript", "export", "onnx"])
def test_model_exports_reproduce_the_eager_model(trained, tmp_path, fmt):
    from toolkit.bundle.export import FORMATS, TOLERANCE

    tmp, _ = trained
    out = tmp_path / FORMATS[fmt]
    result = _cit(
        "export",
        "--bundle",
        str(BUNDLE_DIR),
        "--ckpt-dir",
        str(tmp / "models"),
        "--output-dir",
        str(tmp / "output"),
        "--format",
        fmt,
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert out.is_file() and f"tolerance {TOLERANCE:g}" in result.stdout
    if fmt == "torchscript":  # what MONAI Deploy reads: the metadata inside names the trained classes
        from monai.data import load_net_with_metadata

        _, meta, extra = load_net_with_metadata(str(out), more_extra_files=("inference.json",))
        channel_def = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
        assert channel_def == {str(i): name for i, name in enumerate(CLASSES)}
        assert "%configs" not in extra["inference.json"].decode()


@pytest.mark.slow
def test_packed_bundle_loads_and_verifies_outside_the_repository(trained, tmp_path):
    import json

    import torch
    from monai.bundle import load

    tmp, inputs = trained
    packed = tmp_path / "elsewhere" / BUNDLE
    result = _cit(
        "export",
        "--bundle",
        str(BUNDLE_DIR),
        "--ckpt-dir",
        str(tmp / "models"),
        "--format",
        "bundle",
        "--out",
        str(packed),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    configs = "".join(p.read_text() for p in (packed / "configs").glob("*.json"))
    assert "%configs/base" not in configs, "the copy still points into this repository"
    meta = json.loads((packed / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == len(CLASSES)
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [40, 40]

    # MONAI's own loaders, run from a folder that is not this repository
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"bundle_root": str(packed)}))
    state = torch.load(tmp / "models" / "model.pt", weights_only=True)
    for workflow_type in ("inference", "train"):  # "train" is load's default: train.json's network_def
        net = load(BUNDLE, bundle_dir=str(packed.parent), workflow_type=workflow_type, args_file=str(args))
        # copy_model_state skips tensors of another shape without a word: every one must have come
        assert net.state_dict().keys() == state.keys(), workflow_type
        assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items()), workflow_type
    outside = dict(cwd=tmp_path, capture_output=True, text=True, timeout=600)
    verify = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "verify_net_in_out",
            "network_def",
            "--meta_file",
            str(packed / "configs" / "metadata.json"),
            "--config_file",
            str(packed / "configs" / "inference.json"),
            "--bundle_root",
            str(packed),
            "--device",
            "cpu",
        ],
        **outside,
    )
    assert verify.returncode == 0, verify.stdout[-3000:] + verify.stderr[-3000:]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "inference",
            "--config_file",
            str(packed / "configs" / "inference.json"),
            "--bundle_root",
            str(packed),
            "--dataset_dir",
            str(inputs),
            "--inference_dir",
            str(tmp_path / "pred"),
        ],
        **outside,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    names = {r.split(",")[2] for r in (tmp_path / "pred" / "predictions.csv").read_text().splitlines()[1:]}
    assert names <= set(CLASSES) and names


@pytest.mark.slow
def test_published_bundle_fetches_its_weights_from_a_server(trained, tmp_path):
    """A site publishes the packed folder; a copy without the weights fetches them over HTTP (here a
    real server on 127.0.0.1) with the SHA-256 of large_files.yml checked."""
    import functools
    import hashlib
    import http.server
    import threading

    tmp, _ = trained
    published = tmp_path / "www" / BUNDLE
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(published))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        result = _cit(
            "export",
            "--bundle",
            str(BUNDLE_DIR),
            "--ckpt-dir",
            str(tmp / "models"),
            "--format",
            "bundle",
            "--out",
            str(published),
            "--base-url",
            url,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert url in (published / "large_files.yml").read_text()
        site = tmp_path / "hospital" / BUNDLE
        shutil.copytree(published, site)
        (site / "models" / "model.pt").unlink()
        fetched = _cit("fetch-weights", "--bundle", str(site))
        assert fetched.returncode == 0, fetched.stdout[-2000:] + fetched.stderr[-2000:]
        digest = hashlib.sha256((site / "models" / "model.pt").read_bytes()).hexdigest()
        assert digest == hashlib.sha256((tmp / "models" / "model.pt").read_bytes()).hexdigest()
        # a tampered file on the server is refused and not kept
        (site / "models" / "model.pt").unlink()
        with open(published / "models" / "model.pt", "ab") as f:
            f.write(b"tampered")
        refused = _cit("fetch-weights", "--bundle", str(site))
        assert refused.returncode != 0 and "hash" in (refused.stdout + refused.stderr).lower()
        assert not (site / "models" / "model.pt").exists()
    finally:
        server.shutdown()


@pytest.mark.slow
def test_onnxruntime_backend_equals_pytorch_and_never_uses_a_stale_export(trained, tmp_path):
    import json

    import torch

    tmp, inputs = trained
    models = tmp_path / "models"
    shutil.copytree(tmp / "models", models)
    exported = _cit(
        "export",
        "--bundle",
        str(BUNDLE_DIR),
        "--ckpt-dir",
        str(models),
        "--output-dir",
        str(tmp / "output"),
        "--format",
        "onnx",
    )
    assert exported.returncode == 0, exported.stderr[-3000:]
    base = [
        "infer",
        "--bundle",
        str(BUNDLE_DIR),
        "--ckpt-path",
        str(models / "model.pt"),
        "--input",
        str(inputs),
        "--device",
        "cpu",
        "--no-progress",
    ]
    for backend in ("auto", "pytorch"):
        result = _cit(*base, "--output", str(tmp_path / backend), "--backend", backend)
        assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "auto" / "run.json").read_text())["options"]["backend"] == "onnxruntime"
    assert json.loads((tmp_path / "pytorch" / "run.json").read_text())["options"]["backend"] == "pytorch"
    onnx, torch_rows = (
        _probs(tmp_path / "auto" / "predictions.csv", "path"),
        _probs(tmp_path / "pytorch" / "predictions.csv", "path"),
    )
    assert set(onnx) == set(torch_rows)
    for name in onnx:
        np.testing.assert_allclose(onnx[name], torch_rows[name], atol=1e-4, err_msg=name)
    # the export itself is part of the run's identity: a swapped model.onnx never adds rows to old ones
    onnx_file = models / "model.onnx"
    original = onnx_file.read_bytes()
    onnx_file.write_bytes(original + b"\0")  # another file, the record beside it unchanged
    swapped = _cit(*base, "--output", str(tmp_path / "auto"))
    assert swapped.returncode == 5 and "ONNX export sha256" in swapped.stderr, swapped.stderr[-2000:]
    onnx_file.write_bytes(original)
    # new weights beside the old export: auto falls back to PyTorch, an explicit onnxruntime is refused
    state = torch.load(models / "model.pt", weights_only=True)
    state["fc.bias"] += 1.0
    torch.save(state, models / "model.pt")
    result = _cit(*base, "--output", str(tmp_path / "stale_auto"))
    assert (
        result.returncode == 0
        and json.loads((tmp_path / "stale_auto" / "run.json").read_text())["options"]["backend"] == "pytorch"
    )
    refused = _cit(*base, "--output", str(tmp_path / "stale_onnx"), "--backend", "onnxruntime")
    assert refused.returncode != 0 and "exported from other weights" in refused.stderr


@pytest.mark.parametrize(
    "entry, why",
    [
        ({"hash_val": "", "hash_type": "sha256"}, "no SHA-256"),
        ({"hash_val": "d41d8cd98f00b204e9800998ecf8427e", "hash_type": "md5"}, "no SHA-256"),
        ({"url": "file:///etc/shadow"}, "URL scheme 'file' refused"),
        ({"url": "http://models.example.org/models/model.pt"}, "URL scheme 'http' refused"),
        ({"path": "../../outside.pt"}, "the path does not stay inside the bundle folder"),
    ],
)
def test_fetch_weights_refuses_entries_it_cannot_verify_before_any_download(tmp_path, entry, why, capsys):
    from toolkit.cli import main

    site = tmp_path / "hospital" / BUNDLE
    site.mkdir(parents=True)
    good = {
        "path": "models/model.pt",
        "url": "https://models.example.org/models/model.pt",
        "hash_val": "a" * 64,
        "hash_type": "sha256",
    }
    listed = {**good, **entry}
    (site / "large_files.yml").write_text(json.dumps({"large_files": [listed]}))
    assert main(["fetch-weights", "--bundle", str(site)]) == 1
    err = capsys.readouterr().err
    assert f"cit fetch-weights: refused: {listed['path']}: {why}" in err
    assert sorted(p.name for p in site.rglob("*")) == ["large_files.yml"], "nothing fetched or written"
