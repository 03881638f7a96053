"""MAP packaging (deploy/package_map.py): offline, the real holoscan-cli packager writes the whole Docker build
context (Dockerfile, app, app.yaml, manifests, the model folder, requirements naming the toolkit wheel built
from this repository) and the run stops at the Docker step, not before. The pins of deploy/requirements.txt
are checked against what the packager detected in the deploy virtualenv and against the local manifest.

Needs the deploy virtualenv (`bash deploy/setup_env.sh`; `$CIT_DEPLOY_VENV`, default deploy/.venv).
DOCKER_HOST names a socket nobody listens on, so that even a machine with Docker never builds an image here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.bundles.bundle_helpers import REPO_ROOT
from tests.deploy.deploy_venv import deploy_python_or_skip

DEPLOY_PYTHON = deploy_python_or_skip("the MAP packaging test")
DEPLOY = REPO_ROOT / "deploy"
DOCKER_STEP_FAILED = 3


def _pins() -> dict[str, str]:
    text = (DEPLOY / "requirements.txt").read_text()
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, flags=re.MULTILINE))


def _package(bundle: Path, out: Path, tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp / 'no-docker-daemon.sock'}"}
    cmd = [
        str(DEPLOY_PYTHON),
        str(DEPLOY / "package_map.py"),
        "--models",
        str(bundle),
        "--out",
        str(out),
        "--tag",
        "cit-test:0.0.1",
        "--build-cache",
        str(tmp / "build-cache"),
    ]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def bundle(module_tmp) -> Path:
    """A bundle folder as `cit export --format bundle` lays it out, under a name that needs sanitising.

    The packager copies it without reading it; the model file is random bytes, compared byte for byte.
    """
    folder = module_tmp("bundle") / "brain ct; v1"
    (folder / "configs").mkdir(parents=True)
    for name in ("inference.json", "metadata.json"):
        (folder / "configs" / name).write_bytes(
            (REPO_ROOT / "bundles/resnet18_brain_ct/configs" / name).read_bytes()
        )
    (folder / "models").mkdir()
    (folder / "models" / "model.pt").write_bytes(os.urandom(4096))
    (folder / "models" / "model_info.json").write_text('{"classes": ["a", "b"]}')
    return folder


@pytest.fixture(scope="module")
def packaged(bundle, module_tmp) -> tuple[subprocess.CompletedProcess, Path]:
    tmp = module_tmp("map")
    return _package(bundle, tmp / "out", tmp), tmp / "out" / "context"


def test_the_run_stops_at_the_docker_step_with_the_context_complete(packaged):
    result, context = packaged
    log = result.stdout + result.stderr
    assert result.returncode == DOCKER_STEP_FAILED, log
    assert "stopped at the Docker step" in result.stderr, log
    # the last thing before Docker is the packager's builder handing the finished context over
    assert log.index("Build context complete") < log.index("stopped at the Docker step"), log
    for name in ("Dockerfile", "app.config", "map/app.json", "map/pkg.json", "pip/requirements.txt", "tools"):
        assert (context / name).is_file(), name


def test_pins_agree_with_the_deploy_virtualenv_and_the_local_manifest(packaged):
    _, context = packaged
    pins = _pins()
    assert pins["holoscan-cli"] == pins["holoscan-cu13"], (
        "holoscan-cli packages for the Holoscan of its version"
    )
    manifest = json.loads((DEPLOY / "holoscan-artifacts.json").read_text())
    assert pins["holoscan-cu13"] in manifest
    dockerfile = (context / "Dockerfile").read_text()
    # versions the packager detected in the deploy virtualenv: they are the pinned ones
    assert f'LABEL org.nvidia.holoscan="{pins["holoscan-cu13"]}"' in dockerfile
    assert f'LABEL org.monai.deploy.app-sdk="{pins["monai-deploy-app-sdk"]}"' in dockerfile
    base = manifest[pins["holoscan-cu13"]]["holoscan"]["base-images"]["dgpu"]
    assert f"FROM {base} AS base" in dockerfile
    app = json.loads((context / "map" / "app.json").read_text())
    assert (app["sdk"], app["sdkVersion"]) == ("monai-deploy", pins["monai-deploy-app-sdk"])


def test_the_image_installs_the_toolkit_from_the_wheel_built_here(packaged):
    _, context = packaged
    requirements = (context / "pip" / "requirements.txt").read_text().splitlines()
    for name, version in _pins().items():
        assert f"{name}=={version}" in requirements
    wheel_line = [line for line in requirements if line.endswith(".whl")]
    assert len(wheel_line) == 1 and wheel_line[0].startswith("/tmp/wheels/clinical_imaging_toolkit-"), (
        requirements
    )
    wheel = context / "wheels" / Path(wheel_line[0]).name
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "toolkit/__init__.py" in names and "toolkit/cli/__init__.py" in names
    assert "Name: clinical-imaging-toolkit" in metadata and "Requires-Dist: torch==2.14.1" in metadata
    # the wheel is in the image before pip reads the requirements naming it
    lines = (context / "Dockerfile").read_text().splitlines()
    copy_wheels = lines.index("COPY ./wheels /tmp/wheels")
    assert copy_wheels < lines.index("COPY ./pip/requirements.txt /tmp/requirements.txt")
    assert copy_wheels < next(i for i, line in enumerate(lines) if "-r /tmp/requirements.txt" in line)


def test_the_context_holds_the_app_its_config_and_the_model_folder(packaged, bundle):
    _, context = packaged
    assert (context / "app.config").read_bytes() == (DEPLOY / "app.yaml").read_bytes()
    app_files = sorted(p.name for p in (context / "app").iterdir())
    assert {"__main__.py", "app.py", "model.py", "operators.py", "rules.json"} <= set(app_files)
    assert "package_map.py" not in app_files and ".venv" not in app_files
    model = context / "models" / "brain_ct_v1"  # the folder name sanitised
    assert sorted(p.relative_to(model) for p in model.rglob("*") if p.is_file()) == sorted(
        p.relative_to(bundle) for p in bundle.rglob("*") if p.is_file()
    )
    assert (model / "models" / "model.pt").read_bytes() == (bundle / "models" / "model.pt").read_bytes()
    pkg = json.loads((context / "map" / "pkg.json").read_text())
    assert pkg["models"] == {"brain_ct_v1": "/opt/holoscan/models/brain_ct_v1"}
    assert "COPY ./models  /opt/holoscan/models" in (context / "Dockerfile").read_text()


def test_a_folder_it_did_not_make_is_never_replaced(bundle, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("someone's file")
    result = _package(bundle, out, tmp_path)
    assert result.returncode == 1 and "was not made by this script" in result.stderr, result.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_a_bundle_holding_a_symbolic_link_is_refused(bundle, tmp_path):
    linked = tmp_path / "linked_bundle"
    shutil.copytree(bundle, linked)
    (linked / "models" / "extra.pt").symlink_to(REPO_ROOT / "pyproject.toml")  # would copy the target in
    result = _package(linked, tmp_path / "out", tmp_path)
    assert result.returncode == 1 and "models/extra.pt" in result.stderr, result.stderr
    assert not (tmp_path / "out" / "context").exists()
