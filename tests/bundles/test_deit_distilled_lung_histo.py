"""The distilled-DeiT lung histopathology bundle: a teacher trained by the bundle itself, then a
distilled DeiT student on the same near-duplicate-grouped split, run as users run them
(``python -m monai.bundle run ...``) on a tiny LC25000-style tree; and the teacher's preprocessing
reconciled with the student's, or refused with both named."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from monai.bundle import verify_metadata, verify_net_in_out
from PIL import Image

from tests.bundles.bundle_helpers import REPO_ROOT, bundle_config, bundle_recipe, run_bundle
from toolkit.bundle import TeacherMismatchError, load_teacher, preprocessing_transforms
from toolkit.bundle.teacher import TeacherInput, teacher_input
from toolkit.data import load_datalist

BUNDLE = "deit_distilled_lung_histo"
CLASSES = ["lung_aca", "lung_n", "lung_scc"]
STUDENT = "deit_tiny_distilled_patch16_224"
SMALL = {"image_size": 32, "max_epochs": 1, "batch_size": 8}


def _pattern(rng, size=40) -> np.ndarray:
    coarse = Image.fromarray((rng.random((5, 5, 3)) * 255).astype(np.uint8))
    return np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC))


def write_lc25000_tree(root, seed=0):
    """``lung_aca/``, ``lung_n/``, ``lung_scc/`` of 40 px RGB PNGs, each class with 2 originals that
    have a rotated and a mirrored copy (as LC25000 was made) and 6 other images; returns the clusters."""
    rng = np.random.default_rng(seed)
    clusters = []
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        tint = np.array(
            [40 * c, 0, 40 * (2 - c)]
        )  # a class-specific colour cast, so a model can learn something
        for k in range(2):
            original = np.clip(_pattern(rng) * 0.7 + tint, 0, 255).astype(np.uint8)
            paths = [root / name / f"{name}_orig{k}_{v}.png" for v in range(3)]
            for path, image in zip(paths, (original, np.rot90(original), np.fliplr(original)), strict=True):
                Image.fromarray(np.ascontiguousarray(image)).save(path)
            clusters.append({str(p) for p in paths})
        for k in range(6):
            Image.fromarray(np.clip(_pattern(rng) * 0.7 + tint, 0, 255).astype(np.uint8)).save(
                root / name / f"{name}_{k}.png"
            )
    return clusters


@pytest.fixture(scope="module")
def runs(module_tmp):
    """Teacher (ResNet-18, no teacher of its own) and distilled student, one tiny epoch each."""
    tmp = module_tmp("lung_distill")
    data = tmp / "lc25000_lung"
    clusters = write_lc25000_tree(data)
    teacher, student = tmp / "teacher", tmp / "student"
    teacher_run = run_bundle(
        BUNDLE,
        "training",
        "train",
        teacher,
        dataset_dir=data,
        model_name="resnet18",
        learning_rate=0.001,
        **SMALL,
    )
    student_run = run_bundle(
        BUNDLE,
        "training",
        "train",
        student,
        dataset_dir=data,
        model_name=STUDENT,
        teacher_ckpt=teacher / "models" / "model.pt",
        distill_mode="soft",
        **SMALL,
    )
    return {
        "data": data,
        "clusters": clusters,
        "teacher": teacher,
        "student": student,
        "logs": {
            "teacher": teacher_run.stdout + teacher_run.stderr,
            "student": student_run.stdout + student_run.stderr,
        },
    }


@pytest.mark.slow
def test_student_is_distilled_from_the_teacher_on_the_same_grouped_split(runs):
    assert "training WITHOUT distillation" in runs["logs"]["teacher"]  # teacher_ckpt null by default
    assert (
        "teacher: " in runs["logs"]["student"] and "the student's tensor as it is" in runs["logs"]["student"]
    )
    teacher_doc = load_datalist(runs["teacher"] / "output" / "datalist.json")
    student_doc = load_datalist(runs["student"] / "output" / "datalist.json")
    assert teacher_doc["split_fingerprint"] == student_doc["split_fingerprint"]
    assert student_doc["split_spec"]["group_near_duplicates"] == {"confirm_pixels": 0.35}
    assert student_doc["near_duplicate_grouping"]["duplicate_clusters"] == len(runs["clusters"])
    for cluster in runs["clusters"]:
        homes = {
            s for s in ("training", "validation", "test") for i in student_doc[s] if i["image"] in cluster
        }
        assert len(homes) == 1, f"a planted cluster spans splits {homes}"
    info = json.loads((runs["student"] / "models" / "model_info.json").read_text())
    assert info["network"] == {"name": STUDENT, "num_classes": 3, "in_channels": 3, "img_size": 32}
    assert info["class_names"] == CLASSES and info["preprocessing"]["intensity"] == "imagenet"
    with open(runs["student"] / "output" / "train" / "training_history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    assert len(history) == 1
    row = history[0]
    total = 0.5 * float(row["train_loss_ce"]) + 0.5 * float(row["train_loss_distill"])
    assert float(row["train_loss"]) == pytest.approx(
        total, rel=1e-4
    )  # epoch means of loss = 0.5 ce + 0.5 distill
    assert list((runs["student"] / "output" / "train").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_evaluation_and_network_check_of_the_distilled_student(runs, monkeypatch):
    student = runs["student"]
    run_bundle(BUNDLE, "evaluating", "evaluate", student)
    metrics = json.loads((student / "output" / "eval" / "metrics.json").read_text())
    test_items = load_datalist(student / "output" / "datalist.json")["test"]
    assert metrics["num_samples"] == len(test_items) and 0.0 <= metrics["accuracy"] <= 1.0
    # MONAI's bundle checks, in this process: the metadata against the vendored schema, and the network the
    # inference config rebuilds from model_info.json (a 32 px DeiT here, so the input shape is overridden)
    monkeypatch.chdir(REPO_ROOT)  # the configs' base macros are relative to the repository root
    meta = bundle_config(BUNDLE, "metadata")
    verify_metadata(
        meta_file=meta, filepath=str(REPO_ROOT / "toolkit" / "resources" / "bundle_metadata_schema.json")
    )
    verify_net_in_out(
        net_id="network_def",
        meta_file=meta,
        config_file=bundle_config(BUNDLE, "inference"),
        device="cpu",
        **{
            "ckpt_dir": str(student / "models"),
            "_meta_#network_data_format#inputs#image#spatial_shape": [32, 32],
        },
    )


@pytest.mark.slow
def test_a_missing_teacher_says_what_to_run(runs, tmp_path):
    missing = tmp_path / "no_teacher" / "model.pt"
    result = run_bundle(
        BUNDLE,
        "training",
        "train",
        tmp_path,
        check=False,
        dataset_dir=runs["data"],
        model_name=STUDENT,
        teacher_ckpt=missing,
        **SMALL,
    )
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"teacher not found: {missing}" in text
    assert (
        "python -m monai.bundle run training --config_file bundles/deit_distilled_lung_histo/configs/train.json"
        in text
    )
    assert (
        f"--dataset_dir {runs['data']}" in text and "--teacher_ckpt runs/lung_teacher/models/model.pt" in text
    )


# what the bundle records for its student: with `imagenet`, the mean / std its architecture's weights expect
STUDENT_PREP = {
    k: v
    for k, v in bundle_recipe("deit_distilled_lung_histo", model_name=STUDENT, image_size=32)
    .get_parsed_content("evaluation_preprocessing")
    .items()
    if v is not None
}


@pytest.mark.slow
def test_teacher_from_another_split_or_other_classes_is_refused(runs):
    ckpt = runs["teacher"] / "models" / "model.pt"
    with pytest.raises(TeacherMismatchError, match="may have learnt the student's validation / test images"):
        load_teacher(ckpt, STUDENT_PREP, CLASSES, split_fingerprint="0123456789abcdef")
    teacher = load_teacher(
        ckpt, STUDENT_PREP, CLASSES, split_fingerprint="0123456789abcdef", require_same_split=False
    )
    assert teacher is not None and not teacher.training
    with pytest.raises(
        TeacherMismatchError, match=r"classes \['lung_aca', 'lung_n', 'lung_scc'\], the student on"
    ):
        load_teacher(ckpt, STUDENT_PREP, ["lung_n", "lung_aca", "lung_scc"])
    # the teacher's bundle folder works as well as its weights file (network from its configs/inference.json)
    bundle_dir = runs["teacher"]
    assert not (bundle_dir / "configs").exists()  # a run folder is not a bundle: refused as such
    with pytest.raises(FileNotFoundError, match="neither a weights file nor a bundle folder"):
        load_teacher(bundle_dir, STUDENT_PREP, CLASSES)


@pytest.mark.slow
def test_teacher_at_another_size_gets_the_student_batch_resized(runs):
    ckpt = runs["teacher"] / "models" / "model.pt"
    student_prep = {**STUDENT_PREP, "image_size": 48, "reader_max_size": 48}
    teacher = load_teacher(ckpt, student_prep, CLASSES)
    assert isinstance(teacher.input_adapter, TeacherInput) and teacher.input_adapter.size == (32, 32)
    batch = torch.randn(2, 3, 48, 48)
    assert torch.equal(
        teacher(batch),
        teacher.network(
            torch.nn.functional.interpolate(
                batch, size=(32, 32), mode="bilinear", align_corners=False, antialias=True
            )
        ),
    )


# ---------------------------------------------------------------------------------------------
# preprocessing reconciliation on real preprocessing chains (no training)


@pytest.fixture()
def rgb_image(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "patch.png"
    Image.fromarray(_pattern(rng, 32)).save(path)
    return str(path)


def _chain(prep: dict, path: str) -> torch.Tensor:
    return preprocessing_transforms(prep, label_key=None)({"image": path})["image"][None]


@pytest.mark.parametrize(
    "teacher",
    [
        {"image_size": 32, "channels": 3, "colour": "rgb", "intensity": "minmax"},
        {"image_size": 32, "channels": 3, "colour": "grey", "intensity": "imagenet"},
        {"image_size": 32, "channels": 1, "colour": "grey", "intensity": "imagenet"},
        {"image_size": 32, "channels": 1, "colour": "rgb", "intensity": "minmax"},
        # an ImageNet EfficientNet-Lite teacher: its weights' own mean = std = 0.5
        {
            "image_size": 32,
            "channels": 3,
            "colour": "rgb",
            "intensity": "imagenet",
            "intensity_kwargs": {"mean": [0.5] * 3, "std": [0.5] * 3},
        },
    ],
    ids=["minmax", "grey-3ch", "grey-1ch", "luminance-minmax", "lite-0.5"],
)
def test_converted_student_tensor_equals_the_teachers_own_preprocessing(rgb_image, teacher):
    adapter = teacher_input(STUDENT_PREP, teacher)
    assert isinstance(adapter, TeacherInput)
    converted = adapter(_chain(STUDENT_PREP, rgb_image))
    expected = _chain(teacher, rgb_image)
    assert converted.shape == expected.shape
    assert torch.allclose(converted, expected, atol=1e-5), (converted - expected).abs().max()


def test_same_preprocessing_means_the_same_tensor():
    assert teacher_input(STUDENT_PREP, {**STUDENT_PREP, "reader_max_size": None}) is None


def test_preprocessing_that_cannot_be_converted_is_refused_naming_both():
    with pytest.raises(TeacherMismatchError, match=r"intensity 'zscore' .*the student with 'imagenet'"):
        teacher_input(STUDENT_PREP, {**STUDENT_PREP, "intensity": "zscore", "channels": 1})
    with pytest.raises(TeacherMismatchError, match="trained on colour images .*the student's input is grey"):
        teacher_input({**STUDENT_PREP, "colour": "grey"}, STUDENT_PREP)
    with pytest.raises(TeacherMismatchError, match=r"differs in nifti_slice \(student nifti_slice='middle'"):
        teacher_input({**STUDENT_PREP, "nifti_slice": "middle"}, {**STUDENT_PREP, "nifti_slice": 3})
