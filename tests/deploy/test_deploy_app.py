"""The MONAI Deploy app (deploy/): a model trained on 4 classes, exported with `cit export`, run by the app
in its own virtualenv on DICOMs written here and on the real chest films; the SR read back with pydicom
names the class `cit infer` names, with its probabilities, and carries the patient / study identifiers.

Needs the deploy virtualenv (`bash deploy/setup_env.sh`; `$CIT_DEPLOY_VENV`, default deploy/.venv): the
whole module is skipped, before anything is trained, when it does not exist.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.bundles.bundle_helpers import REPO_ROOT, run_bundle
from tests.deploy.deploy_venv import deploy_python_or_skip

DEPLOY_PYTHON = deploy_python_or_skip("the Deploy app tests")

BUNDLE = "resnet18_brain_ct"
CLASSES = ("glioma", "meningioma", "notumor", "pituitary")  # the bundle's own metadata says 3
# The app and `cit infer` run the same preprocessing and network code in float32 on the CPU: equal for the
# exported bundle folder (measured 0); model.ts is the traced network (measured differences ~1e-7).
TOLERANCE = 1e-5
PATIENT = {"PatientID": "CIT-DEPLOY-001", "PatientName": "Test^Deploy", "AccessionNumber": "ACC42"}


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CIT_DEPLOY_DEVICE": "cpu"}


def _run(
    args: list[str], timeout: int = 600, codes=(0,), env: dict | None = None
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        args, cwd=REPO_ROOT, env={**_env(), **(env or {})}, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode in codes, f"{' '.join(args)}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def model(module_tmp):
    """A model trained for one epoch on 4 synthetic classes, exported as a bundle folder and as model.ts.
    Its training run's output (the recorded split, datalist.json) is ``model.parent / "output"``."""
    from toolkit.data import make_synthetic_dataset

    tmp = module_tmp("deploy_model")
    # one image per patient: 16 patients split 12 / 2 / 2, whose 2 validation images are of two classes (the
    # int8 export's guard needs a class with both outcomes there)
    datalist = make_synthetic_dataset(
        tmp / "data", n_patients=16, images_per_patient=1, image_size=48, seed=9, classes=CLASSES
    )
    run_bundle(
        BUNDLE,
        "training",
        "train",
        tmp,
        dataset_dir=datalist,
        max_epochs=1,
        image_size=32,
        batch_size=4,
        pretrained=None,
    )
    bundle = tmp / "bundle"
    cit = [sys.executable, "-m", "toolkit", "export", "--bundle", f"bundles/{BUNDLE}"]
    _run([*cit, "--format", "bundle", "--ckpt-dir", str(tmp / "models"), "--out", str(bundle)])
    _run(
        [
            *cit,
            "--format",
            "torchscript",
            "--ckpt-dir",
            str(bundle / "models"),
            "--out",
            str(bundle / "models" / "model.ts"),
            "--output-dir",
            str(tmp / "output"),
        ]
    )
    return bundle


def _write_dicom(
    path: Path,
    modality: str,
    sop_class: str,
    pixels: np.ndarray,
    study: str,
    series: str,
    photometric: str = "MONOCHROME2",
) -> str:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.Modality, ds.StudyDate, ds.StudyTime = modality, "20240102", "101500"
    for key, value in PATIENT.items():
        setattr(ds, key, value)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds.SOPInstanceUID


@pytest.fixture(scope="module")
def written_study(module_tmp):
    """One study: a CR film (MONOCHROME1) and a DX film in two series, a CT slice, an ultrasound image
    (not selected by the rules) and a text file. Returns (folder, {file: SOPInstanceUID}, StudyInstanceUID)."""
    from pydicom.uid import generate_uid

    folder = module_tmp("written_study")
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:96, 0:80]
    study = generate_uid()
    films = {
        "cr_mono1.dcm": ("CR", "1.2.840.10008.5.1.4.1.1.1", "MONOCHROME1", 4000 - 30 * xx),
        "dx.dcm": (
            "DX",
            "1.2.840.10008.5.1.4.1.1.1.1",
            "MONOCHROME2",
            40 * yy + rng.integers(0, 300, (96, 80)),
        ),
        "ct_slice": (
            "CT",
            "1.2.840.10008.5.1.4.1.1.2",
            "MONOCHROME2",
            ((xx - 40) ** 2 + (yy - 48) ** 2) % 2000,
        ),
        "us.dcm": ("US", "1.2.840.10008.5.1.4.1.1.6.1", "MONOCHROME2", rng.integers(0, 4000, (96, 80))),
    }
    uids = {}
    for name, (modality, sop_class, photometric, pixels) in films.items():
        uids[name] = _write_dicom(
            folder / name, modality, sop_class, pixels, study, generate_uid(), photometric
        )
    (folder / "notes.txt").write_text("not an image\n")
    return folder, uids, study


def _cit_infer(model: Path, inputs: Path, out: Path, codes=(0,)) -> dict[str, dict]:
    """`cit infer` on ``inputs``: {SOPInstanceUID: row} of predictions.jsonl (full precision)."""
    _run(
        [
            sys.executable,
            "-m",
            "toolkit",
            "infer",
            "--bundle",
            str(model),
            "--input",
            str(inputs),
            "--output",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
        ],
        codes=codes,
    )
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines() if line.strip()]
    return {r["sop_instance_uid"]: r for r in rows if r["status"] == "ok"}


def _run_app(inputs: Path, out: Path, model: Path, backend: str = "auto") -> None:
    _run(
        [str(DEPLOY_PYTHON), "-m", "deploy", "-i", str(inputs), "-o", str(out), "-m", str(model)],
        env={"CIT_DEPLOY_BACKEND": backend},
    )


def _sr_groups(path: Path) -> tuple:
    """(dataset, {referenced SOPInstanceUID: (finding class name, {class: probability})}) of an SR."""
    import pydicom

    ds = pydicom.dcmread(path)
    groups = {}

    def walk(items):
        for item in items:
            name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
            if item.ValueType == "CONTAINER" and name == "Measurement Group":
                finding, probs, ref = None, {}, None
                for child in item.ContentSequence:
                    meaning = child.ConceptNameCodeSequence[0].CodeMeaning
                    if child.ValueType == "CODE" and meaning == "Finding":
                        finding = child.ConceptCodeSequence[0].CodeMeaning
                    elif child.ValueType == "NUM" and meaning.startswith("Probability of "):
                        probs[meaning[len("Probability of ") :]] = float(
                            child.MeasuredValueSequence[0].NumericValue
                        )
                    elif child.ValueType == "IMAGE":
                        ref = child.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                groups[ref] = (finding, probs)
            elif "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(ds.ContentSequence)
    return ds, groups


def _check_against_cit(out: Path, expected: dict[str, dict], selected: set[str]) -> list[str]:
    """Every selected image is in the SR and the JSON of its study with `cit infer`'s class and probabilities.
    Returns the class names the SRs name."""
    reports = sorted((out / "sr").glob("*.dcm"))
    found, names = {}, []
    for report in reports:
        ds, groups = _sr_groups(report)
        doc = json.loads((out / "json" / f"{report.stem}.json").read_text())
        assert doc["model"]["class_names"] == list(CLASSES)
        assert doc["identifiers"]["StudyInstanceUID"] == ds.StudyInstanceUID == report.stem
        json_rows = {r["sop_instance_uid"]: r for r in doc["results"]}
        for uid, (finding, probs) in groups.items():
            row = expected[uid]
            assert finding == row["pred_name"] == json_rows[uid]["pred_name"], uid
            cit_probs = [row[f"prob_{c}"] for c in CLASSES]
            np.testing.assert_allclose(
                [probs[c] for c in CLASSES], cit_probs, atol=TOLERANCE, rtol=0, err_msg=uid
            )
            np.testing.assert_allclose(
                [json_rows[uid]["probabilities"][c] for c in CLASSES],
                cit_probs,
                atol=TOLERANCE,
                rtol=0,
                err_msg=uid,
            )
            found[uid] = report
            names.append(finding)
    assert set(found) == selected
    return names


@pytest.mark.slow
def test_app_on_written_study_equals_cit_infer(model, written_study, tmp_path):
    folder, uids, study = written_study
    expected = _cit_infer(model, folder, tmp_path / "cit")
    _run_app(folder, tmp_path / "app", model)
    selected = {uids[n] for n in ("cr_mono1.dcm", "dx.dcm", "ct_slice")}  # not the ultrasound image
    _check_against_cit(tmp_path / "app", expected, selected)
    sr, _ = _sr_groups(tmp_path / "app" / "sr" / f"{study}.dcm")
    for key, value in PATIENT.items():
        assert str(sr[key].value) == value
    doc = json.loads((tmp_path / "app" / "json" / f"{study}.json").read_text())
    assert {k: doc["identifiers"][k] for k in PATIENT} == PATIENT
    assert (doc["model"]["backend"], doc["model"]["precision"]) == ("pytorch", "fp32")  # no ONNX export there


@pytest.mark.slow
def test_app_runs_the_int8_export_that_cit_infer_runs(model, written_study, tmp_path):
    """A bundle folder with a checked int8 export of its weights: on the CPU the app, like `cit infer --backend
    auto`, runs it (the study's JSON says so) and gives `cit infer`'s int8 probabilities; with
    CIT_DEPLOY_BACKEND=pytorch it runs PyTorch."""
    import shutil

    bundle = shutil.copytree(model, tmp_path / "int8", ignore=shutil.ignore_patterns("model.ts"))
    # the guard is not what is tested here: a 1-epoch model on a few validation images passes any bound
    _run(
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
            str(bundle / "models"),
            "--output-dir",
            str(model.parent / "output"),
            "--max-auroc-drop",
            "1",
            "--min-agreement",
            "0",
        ]
    )
    folder, uids, study = written_study
    expected = _cit_infer(bundle, folder, tmp_path / "cit")
    assert {(row["backend"], row["precision"]) for row in expected.values()} == {("onnxruntime-int8", "int8")}
    selected = {uids[n] for n in ("cr_mono1.dcm", "dx.dcm", "ct_slice")}
    for backend, ran in (("auto", ("onnxruntime-int8", "int8")), ("pytorch", ("pytorch", "fp32"))):
        _run_app(folder, tmp_path / backend, bundle, backend=backend)
        doc = json.loads((tmp_path / backend / "json" / f"{study}.json").read_text())
        assert (doc["model"]["backend"], doc["model"]["precision"]) == ran, backend
    _check_against_cit(tmp_path / "auto", expected, selected)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["bundle", "torchscript"])
def test_app_on_real_chest_films_equals_cit_infer(model, shared_data, tmp_path, form):
    chest = shared_data / "dicom" / "chest_xr"  # CR / DX films, three of them MONOCHROME1; read in place
    expected = _cit_infer(model, chest, tmp_path / "cit")
    assert len(expected) == 4
    _run_app(chest, tmp_path / "app", model if form == "bundle" else model / "models" / "model.ts")
    names = _check_against_cit(tmp_path / "app", expected, set(expected))
    assert len(names) == 4 and set(names) <= set(CLASSES)


@pytest.mark.slow
def test_one_bad_file_never_stops_the_app(model, shared_data, written_study, tmp_path):
    """Every file of the shared DICOM folder (broken and edge cases included, e.g. CT_small.dcm with an
    empty SeriesNumber, which once stopped the whole run in the SDK's loader) beside the written study:
    exit 0, a JSON for every study with a selected image, an SR for every study with a classified one,
    and the classes `cit infer` gives."""
    import shutil

    inputs = tmp_path / "in"
    shutil.copytree(shared_data / "dicom", inputs / "shared")
    shutil.copytree(written_study[0], inputs / "written")
    expected = _cit_infer(model, inputs, tmp_path / "cit", codes=(3,))  # 3: some files are broken
    result = _run(
        [str(DEPLOY_PYTHON), "-m", "deploy", "-i", str(inputs), "-o", str(tmp_path / "app"), "-m", str(model)]
    )
    log = result.stdout + result.stderr
    assert "not classified: shared/broken/" in log, "the broken files are named with a reason"
    assert "--frames each classifies" not in log or "this app classifies single-frame images only" in log
    docs = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "app" / "json").glob("*.json")}
    ok_docs = {stem: d for stem, d in docs.items() if any(r["status"] == "ok" for r in d["results"])}
    assert written_study[2] in ok_docs and len(ok_docs) >= 3, sorted(docs)
    ct_small = next(
        d for d in docs.values() if any(r["file"] == "shared/ct/CT_small.dcm" for r in d["results"])
    )
    assert [r["status"] for r in ct_small["results"] if r["file"] == "shared/ct/CT_small.dcm"] == ["ok"]
    for stem, doc in ok_docs.items():
        assert doc["sr"] == f"sr/{stem}.dcm" and (tmp_path / "app" / doc["sr"]).is_file(), stem
        for row in doc["results"]:
            if row["status"] == "ok":
                assert row["pred_name"] == expected[row["sop_instance_uid"]]["pred_name"], row["file"]


def test_a_foreign_bundle_holding_other_code_is_refused_unless_trusted(model, written_study, tmp_path):
    """A bundle folder is code: the app loads one whose inference.json holds an expression this toolkit's
    bundles do not hold only with CIT_TRUST_BUNDLE=1 (toolkit.bundle.trust)."""
    import shutil

    foreign = shutil.copytree(model, tmp_path / "foreign", ignore=shutil.ignore_patterns("model.ts"))
    config = foreign / "configs" / "inference.json"
    doc = json.loads(config.read_text())
    marker = tmp_path / "ran"
    doc["network"] = f"$open({str(marker)!r}, 'w').close() or {doc['network'][1:]}"
    config.write_text(json.dumps(doc))
    args = [
        str(DEPLOY_PYTHON),
        "-m",
        "deploy",
        "-i",
        str(written_study[0]),
        "-o",
        str(tmp_path / "app"),
        "-m",
        str(foreign),
    ]
    refused = subprocess.run(args, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and not marker.exists()
    assert "code this toolkit's bundles do not hold: network: $open(" in refused.stdout + refused.stderr
    trusted = subprocess.run(
        args,
        cwd=REPO_ROOT,
        env={**_env(), "CIT_TRUST_BUNDLE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert trusted.returncode == 0 and marker.exists(), trusted.stderr[-3000:]
