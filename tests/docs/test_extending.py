"""docs/extending.md, followed step by step in a temporary folder, so its recipes cannot rot.

Each recipe's modules are written from the page's ```python <path>``` blocks and its ```bash```
commands are run as written (in a subprocess, so the registrations stay out of this process), with
the temporary folder as working directory and on ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import cohen_kappa_score

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "extending.md"


def recipe(title: str) -> tuple[dict[str, str], list[str]]:
    """The files (path -> code) and the commands of the section ``## <title>``."""
    sections = re.split(r"^## ", PAGE.read_text(encoding="utf-8"), flags=re.M)
    body = next(s for s in sections if s.startswith(title + "\n"))
    files = dict(re.findall(r"```python (\S+)\n(.*?)```", body, re.S))
    commands = [
        c.strip() for block in re.findall(r"```bash\n(.*?)```", body, re.S) for c in block.splitlines()
    ]
    return files, [c for c in commands if c and not c.startswith("#")]


def environment(folder: Path) -> dict:
    """This environment, with ``folder`` importable and this interpreter's ``cit`` first on ``PATH``."""
    env = {
        **os.environ,
        "PYTHONPATH": str(folder),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("CIT_PLUGINS", None)
    return env


def run(command: str, folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", command],
        cwd=folder,
        env=environment(folder),
        capture_output=True,
        text=True,
        timeout=120,
    )


def write_files(title: str, folder: Path) -> list[str]:
    """Write the recipe's files into ``folder``; its commands."""
    files, commands = recipe(title)
    for name, code in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(code, encoding="utf-8")
    return commands


def follow(title: str, folder: Path) -> list[subprocess.CompletedProcess]:
    """Write the recipe's files into ``folder`` and run its commands there, each checked."""
    done = []
    for command in write_files(title, folder):
        result = run(command, folder)
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        done.append(result)
    return done


def test_every_recipe_has_code_and_commands():
    for title in ("Add a data source", "Add a reader", "Add a metric", "Add a bundle"):
        files, commands = recipe(title)
        assert commands, title
        assert files or title == "Add a bundle", title


def test_data_source_recipe(tmp_path):
    scans = tmp_path / "data" / "scans"
    scans.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for patient in range(12):
        for k in range(2):
            name = f"scans/p{patient:02d}_{k}.png"
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(tmp_path / "data" / name)
            finding = "nodule" if patient % 2 else "normal"
            lines.append(json.dumps({"image": name, "finding": finding, "patient": f"p{patient:02d}"}))
    (tmp_path / "data" / "manifest.jsonl").write_text("\n".join(lines) + "\n")

    follow("Add a data source", tmp_path)

    doc = json.loads((tmp_path / "datalist.json").read_text())
    assert doc["source_kind"] == "jsonl" and doc["labels"] == ["nodule", "normal"]
    splits = {k: doc[k] for k in ("training", "validation", "test")}
    assert sum(len(v) for v in splits.values()) == 24
    patients = {k: {i["patient_id"] for i in v} for k, v in splits.items()}
    assert not (patients["training"] & patients["test"]) and not (
        patients["training"] & patients["validation"]
    )
    for item in splits["training"]:  # each label as the manifest's "finding" key gave it
        assert doc["labels"][item["label"]] == ("nodule" if int(item["patient_id"][1:]) % 2 else "normal")


def test_data_source_recipe_refuses_a_path_outside_its_folder(tmp_path):
    (command,) = write_files("Add a data source", tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.jsonl").write_text(
        json.dumps({"image": "../secret.png", "finding": "x"}) + "\n"
    )
    result = run(command, tmp_path)
    assert result.returncode == 2
    assert "manifest.jsonl:1: image '../secret.png' is outside" in result.stderr


def test_reader_recipe(tmp_path):
    *_, shape = follow("Add a reader", tmp_path)
    assert shape.stdout.strip().splitlines()[-1] == "(6, 8)"


def test_metric_recipe(tmp_path):
    (printed,) = follow("Add a metric", tmp_path)
    expected = cohen_kappa_score([0, 1, 2, 2], [0, 1, 2, 1], weights="quadratic")
    assert float(printed.stdout.strip().splitlines()[-1]) == pytest.approx(expected)
    assert "It prints `0.8`" in PAGE.read_text() and expected == pytest.approx(0.8)


def test_bundle_recipe(tmp_path):
    (tmp_path / "bundles").mkdir()
    shutil.copytree(
        REPO / "bundles" / "resnet18_brain_ct",
        tmp_path / "bundles" / "resnet18_brain_ct",
        ignore=shutil.ignore_patterns("models", "output"),
    )
    trained = (
        tmp_path / "bundles" / "resnet18_brain_ct" / "models"
    )  # a trained bundle's weights, stood in for
    trained.mkdir()
    (trained / "model.pt").write_bytes(b"weights")
    (tmp_path / "configs").symlink_to(REPO / "configs")
    copy, verify = recipe("Add a bundle")[1][:2], recipe("Add a bundle")[1][2:]
    for command in copy:
        assert run(command, tmp_path).returncode == 0, command
    bundle = tmp_path / "bundles" / "my_study"
    assert not (bundle / "models").exists() and (bundle / "configs" / "train.json").is_file()
    meta_file = bundle / "configs" / "metadata.json"  # step 1: make the metadata yours
    meta = json.loads(meta_file.read_text())
    meta.update(name="My study", version="0.2.0", changelog={"0.2.0": "first version of my study"})
    meta_file.write_text(json.dumps(meta, indent=2))
    for name in ("train.json", "evaluate.json", "inference.json"):  # step 2: the bundle's name
        config = json.loads((bundle / "configs" / name).read_text())
        assert config["bundle_name"] == "resnet18_brain_ct"
        (bundle / "configs" / name).write_text(json.dumps({**config, "bundle_name": "my_study"}, indent=2))
    for command in verify:
        result = run(command, tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        checked = [
            line.split(":")[0].split()
            for line in result.stdout.splitlines()
            if line.startswith(("ok", "FAIL"))
        ]
        assert checked == [["ok", "files"], ["ok", "version"], ["ok", "metadata"]], result.stdout
