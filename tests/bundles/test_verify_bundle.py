"""`cit verify-bundle`: the MONAI model zoo's bundle checks, through the command as users run it.

The static checks run on every bundle of the repository; copies of resnet18_brain_ct break one
thing each and must fail with one line naming it; a tiny trained and exported bundle passes all.
"""

import json
import shutil

import pytest

from tests.bundles.bundle_helpers import REPO_ROOT
from toolkit.bundle.verify import CHECKS, STATIC_CHECKS
from toolkit.cli import main
from toolkit.cli.verify_bundle import CHECK_NAMES

BUNDLE = "resnet18_brain_ct"
BUNDLES = sorted(p.name for p in (REPO_ROOT / "bundles").iterdir() if (p / "configs").is_dir())
STATIC = STATIC_CHECKS  # files, large_files, version, metadata: no config is evaluated
ALL = tuple(CHECKS)


def verify(capsys, folder, checks=(), trust=False, **overrides) -> tuple[int, dict[str, str]]:
    """Exit code of `cit verify-bundle folder` and its result line per check."""
    args = ["verify-bundle", str(folder)] + [a for c in checks for a in ("--check", c)]
    args += ["--trust-bundle"] if trust else []
    args += [a for k, v in overrides.items() for a in ("--override", f"{k}={json.dumps(v)}")]
    code = main(args)
    out = capsys.readouterr().out
    lines = {}
    for line in out.splitlines():
        if line.startswith(("ok ", "FAIL ")):
            lines.setdefault(line.split(" ", 1)[1].split(":", 1)[0], line)
    assert "Traceback" not in out
    return code, lines


@pytest.fixture(scope="module")
def data(tiny_brain_ct):
    """Tiny synthetic data (the trained model's): the datalist training takes, the image folder inference takes."""
    return tiny_brain_ct / "data" / "datalist.json", tiny_brain_ct / "data" / "images"


@pytest.fixture
def copy(tmp_path):
    """A copy of the bundle as shipped (no trained model, no outputs)."""
    return shutil.copytree(
        REPO_ROOT / "bundles" / BUNDLE, tmp_path / BUNDLE, ignore=shutil.ignore_patterns("models", "output")
    )


def tiny(data, tmp_path) -> dict:
    """Overrides that make the workflows build on the tiny data, writing under tmp_path."""
    datalist, images = data
    return {
        "dataset_dir": str(datalist),
        "inference:dataset_dir": str(images),
        "output_dir": str(tmp_path / "output"),
        "train:ckpt_dir": str(tmp_path / "models"),
        "cache_rate": 0,
        "pretrained": None,
    }


def test_the_command_offers_every_check_in_order():
    assert (
        CHECK_NAMES
        == ALL
        == ("files", "large_files", "version", "metadata", "properties", "net_in_out", "torchscript")
    )


@pytest.mark.slow
@pytest.mark.parametrize("bundle", BUNDLES)
def test_every_check_passes_on_every_bundle_as_shipped(bundle, data, tmp_path, capsys):
    """Untrained, as in the repository: the workflows build on each bundle's own default (synthetic)
    data, the network checks use the study's model with random weights."""
    overrides = {k: v for k, v in tiny(data, tmp_path).items() if k != "dataset_dir"}
    code, lines = verify(capsys, REPO_ROOT / "bundles" / bundle, **overrides)
    assert set(lines) == set(ALL) and all(line.startswith("ok ") for line in lines.values()), lines
    assert code == 0


def test_missing_licence_fails_files_only(copy, capsys):
    (copy / "LICENSE").unlink()
    code, lines = verify(capsys, copy, STATIC)
    assert code == 1
    assert (
        lines["files"].startswith("FAIL files: missing LICENSE") and str(copy / "LICENSE") in lines["files"]
    )
    assert all(lines[c].startswith("ok ") for c in ("large_files", "version", "metadata"))


def test_version_without_changelog_entry_fails(copy, capsys):
    meta_file = copy / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["version"] = "0.9.0"
    meta_file.write_text(json.dumps(meta))
    code, lines = verify(capsys, copy, STATIC)
    assert code == 1
    assert lines["version"] == f"FAIL version: version '0.9.0' has no entry in 'changelog' of {meta_file}"
    assert lines["metadata"].startswith("ok ")


def test_unsafe_or_wrong_large_files_fail(copy, capsys):
    (copy / "models").mkdir()
    (copy / "models" / "model.pt").write_bytes(b"weights")
    (copy / "large_files.yml").write_text(
        "large_files:\n"
        '  - {path: "models/model.pt", url: "https://example.org/model.pt", hash_val: "0", hash_type: "sha256"}\n'
        '  - {path: "../outside.pt", url: "ftp://example.org/x.pt"}\n'
        '  - {path: "models/other.pt"}\n'
    )
    code, lines = verify(capsys, copy, ["large_files"])
    assert code == 1
    line = lines["large_files"]
    assert line.startswith(f"FAIL large_files: {copy / 'large_files.yml'}: ")
    assert "entry 1: models/model.pt: sha256 hash differs" in line
    assert "entry 2: path '../outside.pt' leaves the bundle folder" in line and "'ftp://" in line
    assert "entry 3: 'url' missing" in line


def test_inference_without_network_def_fails_the_network_checks(copy, data, tmp_path, capsys):
    config = copy / "configs" / "inference.json"
    doc = json.loads(config.read_text())
    del doc["network_def"]
    config.write_text(json.dumps(doc))
    code, lines = verify(
        capsys, copy, ["properties", "net_in_out", "torchscript"], trust=True, **tiny(data, tmp_path)
    )
    assert code == 1
    assert f"{config} lacks required infer properties: network_def" in lines["properties"]
    for check in ("net_in_out", "torchscript"):
        assert lines[check].startswith(f"FAIL {check}: {config}") and "network_def" in lines[check]
    # with the workflows' outputs pointed elsewhere, nothing is written into the bundle
    assert not (copy / "models").exists() and not (copy / "output").exists()


@pytest.fixture(scope="module")
def trained(tiny_brain_ct, module_tmp):
    """The tiny trained model (conftest) and the bundle exported with it."""
    from toolkit.bundle.export import pack_bundle

    exported = pack_bundle(
        REPO_ROOT / "bundles" / BUNDLE,
        module_tmp("export") / BUNDLE,
        ckpt_dir=tiny_brain_ct / "models",
    )
    return tiny_brain_ct, exported


@pytest.mark.slow
def test_trained_in_place_with_other_classes_in_metadata_says_to_export(trained, copy, capsys):
    tmp, _ = trained
    shutil.copytree(tmp / "models", copy / "models")
    meta_file = copy / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["network_data_format"]["outputs"]["pred"]["num_channels"] = 4
    meta_file.write_text(json.dumps(meta))
    code, lines = verify(capsys, copy, ["net_in_out"], trust=True)
    assert code == 1
    line = lines["net_in_out"]
    assert (
        f"{copy / 'models' / 'model_info.json'} describes the trained model (3 classes, 3 input channels)"
        in line
    )
    assert (
        "4 output / 3 input channels" in line and f"cit export --bundle {copy} --format bundle --out" in line
    )


@pytest.mark.slow
def test_exported_trained_bundle_passes_every_check(trained, data, tmp_path, capsys):
    tmp, exported = trained
    shutil.copytree(tmp / "output", tmp_path / "output")  # the training run's split, which evaluation checks
    code, lines = verify(capsys, exported, **tiny(data, tmp_path))
    assert list(lines) == list(ALL) and all(line.startswith("ok ") for line in lines.values()), lines
    assert "untrained" not in lines["torchscript"]
    assert code == 0
    assert not (exported / "models" / "model.ts").exists()  # the export check writes into a temporary folder


@pytest.mark.slow
def test_exported_copy_without_its_training_data_names_the_overrides_evaluation_needs(trained, capsys):
    """Checked as a receiver of the copy would, with no options: the workflows build on the demo data in a
    temporary folder, so the copy's output/ is never filled with a split that is not its model's."""
    _, exported = trained
    assert not (exported / "output").exists()
    code, lines = verify(capsys, exported, ["properties"])
    line = lines["properties"]
    assert code == 0 and line.startswith("ok properties: train.json (train), inference.json (infer)"), line
    assert (
        f"not evaluate.json: it evaluates the trained model on its training run's split, and "
        f"{exported / 'output' / 'datalist.json'} is missing: give --override evaluate:output_dir=" in line
    )
    assert sorted(p.name for p in exported.iterdir()) == ["LICENSE", "configs", "docs", "models"]


def test_a_foreign_folder_with_other_code_is_not_run_unless_trusted(copy, capsys):
    """A bundle folder is code: a copy outside this repository whose inference.json holds an expression
    none of this toolkit's bundles hold is refused before any config is evaluated."""
    config = copy / "configs" / "inference.json"
    doc = json.loads(config.read_text())
    marker = copy / "ran"
    doc["device"] = f"$open({str(marker)!r}, 'w').close() or 'cpu'"
    config.write_text(json.dumps(doc))
    code, lines = verify(capsys, copy, ["properties", "net_in_out", "torchscript"])
    assert code == 1 and not marker.exists()
    for check in ("properties", "net_in_out", "torchscript"):
        assert lines[check].startswith(
            f"FAIL {check}: {config}: code this toolkit's bundles do not hold: device: $open("
        )
        assert "--trust-bundle" in lines[check]
