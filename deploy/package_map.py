"""Package the Deploy app and one exported bundle as a MONAI Application Package (MAP, a container image).

Run with the deploy virtualenv's Python (``bash deploy/setup_env.sh`` first)::

    deploy/.venv/bin/python deploy/package_map.py --models dist/<bundle> [--tag cit-classification:0.1.0]

Everything before Docker happens offline, in ``--out`` (default ``dist/map/<tag>``):

1. ``wheels/``: a wheel of this repository's toolkit, built with ``pip wheel`` from a copy of its sources
   (the image installs the toolkit from it: no package index has it);
2. ``app/``: the app's modules and ``rules.json``, with a ``requirements.txt`` for the image that is
   ``deploy/requirements.txt`` (the same pins as the deploy virtualenv) plus the toolkit wheel;
3. ``models/<bundle>``: the bundle folder (the MAP's ``/opt/holoscan/models/<bundle>``);
4. ``context/``: the Docker build context that holoscan-cli's packager writes (``Dockerfile``,
   ``app/``, ``app.config`` = ``deploy/app.yaml``, ``map/app.json`` + ``pkg.json``, ``models/``,
   ``pip/requirements.txt``, ``wheels/``), with the artifacts manifest read from
   ``deploy/holoscan-artifacts.json`` instead of downloaded.

Then the packager runs ``docker buildx`` on ``context/``: that needs a Docker daemon with buildx and
network access to nvcr.io and PyPI. Exit status: 0 image built; 3 the build context is complete but the
Docker step failed (no docker client, no buildx, no daemon, or the build itself); 1 anything earlier.
Arguments this script does not know are handed to the packager (``--output DIR`` for a tarball,
``--no-cache``, ``--build-cache DIR``, ``--uid`` ...; see ``monai-deploy package --help``).

The packager is driven through its own classes rather than its ``monai-deploy package`` command because
the command builds in a temporary folder that it deletes, and its Dockerfile template for Python apps
copies nothing into the image before ``pip install -r requirements.txt``: one line is added so that the
toolkit wheel is there when pip needs it. Both rely on holoscan-cli internals, hence the exact pin.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from holoscan_cli.__main__ import parse_args, set_up_logging
from holoscan_cli.packager.arguments import PackagingArguments
from holoscan_cli.packager.container_builder import PythonAppBuilder
from holoscan_cli.packager.packager import _create_app_manifest, _create_package_manifest

DEPLOY = Path(__file__).resolve().parent
REPO = DEPLOY.parent
MANIFEST = DEPLOY / "holoscan-artifacts.json"
MARKER = ".cit-map-output"  # only a folder holding it is ever replaced
IMAGE_WHEELS = "/tmp/wheels"  # where the image holds the toolkit wheel while pip installs the requirements
REQUIREMENTS_COPY = "COPY ./pip/requirements.txt /tmp/requirements.txt"
DOCKER_STEP_FAILED = 3

logger = logging.getLogger("packager.cit")


class DockerStepError(RuntimeError):
    """The build context is complete; building the image from it with Docker failed."""


class ToolkitWheelBuilder(PythonAppBuilder):
    """holoscan-cli's builder for Python apps, plus the toolkit wheel in the image before pip runs."""

    def __init__(self, build_parameters, context: str, wheel: Path) -> None:
        self._wheel = wheel
        super().__init__(build_parameters, context)

    def _copy_supporting_files(self, platform_parameters):
        super()._copy_supporting_files(platform_parameters)
        wheels = Path(self._temp_dir) / "wheels"
        wheels.mkdir(exist_ok=True)
        shutil.copy2(self._wheel, wheels / self._wheel.name)

    def _write_dockerfile(self, platform_parameters):
        path = Path(super()._write_dockerfile(platform_parameters))
        text = path.read_text()
        if REQUIREMENTS_COPY not in text:
            raise RuntimeError(
                f"the packager's Dockerfile has no '{REQUIREMENTS_COPY}' line: is holoscan-cli "
                "the version deploy/requirements.txt pins?"
            )
        path.write_text(
            text.replace(REQUIREMENTS_COPY, f"COPY ./wheels {IMAGE_WHEELS}\n{REQUIREMENTS_COPY}", 1)
        )
        return str(path)

    def _build_internal(self, dockerfile, platform_parameters):
        logger.info("Build context complete in %s; building the image with docker buildx...", self._temp_dir)
        try:
            result = super()._build_internal(dockerfile, platform_parameters)
        except Exception as ex:  # python_on_whales: no docker client, no buildx plugin, no daemon
            raise DockerStepError(f"{type(ex).__name__}: {ex}") from ex
        if not result.succeeded:
            raise DockerStepError(result.error)
        return result


def safe_name(text: str) -> str:
    """``text`` as one file name: letters, digits, '.', '_', '-' only, never '.' or '..'."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "unnamed"
    return name[:100]


def prepare_out(out: Path) -> None:
    """Create ``out`` empty; replace it only when a previous run of this script made it."""
    if out.exists():
        if not (out / MARKER).is_file():
            if not out.is_dir() or any(out.iterdir()):
                raise SystemExit(f"{out} exists and was not made by this script: choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by deploy/package_map.py; replaced on its next run\n")


def build_toolkit_wheel(dest: Path) -> Path:
    """A wheel of this repository's toolkit, built offline from a copy of its sources.

    The copy keeps setuptools' build/ and *.egg-info out of the working tree (and two runs from racing
    on them); --no-build-isolation uses the virtualenv's setuptools instead of downloading one.
    """
    with tempfile.TemporaryDirectory(prefix="cit-wheel-") as tmp:
        src = Path(tmp)
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(REPO / name, src / name)
        shutil.copytree(
            REPO / "toolkit", src / "toolkit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            str(src),
            "-w",
            str(dest),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(
                f"building the toolkit wheel failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
    wheels = sorted(dest.glob("clinical_imaging_toolkit-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one toolkit wheel in {dest}, found {[w.name for w in wheels]}")
    return wheels[0]


def stage_app(dest: Path, wheel: Path) -> None:
    """The app folder the packager copies into the image: our modules, the rules, the image's requirements."""
    dest.mkdir()
    for path in sorted(DEPLOY.glob("*.py")):
        if path.name != Path(__file__).name:
            shutil.copy2(path, dest / path.name)
    shutil.copy2(DEPLOY / "rules.json", dest / "rules.json")
    pins = (DEPLOY / "requirements.txt").read_text().rstrip("\n")
    (dest / "requirements.txt").write_text(
        f"{pins}\n# the toolkit itself: the wheel built from this repository by deploy/package_map.py\n"
        f"{IMAGE_WHEELS}/{wheel.name}\n"
    )


def stage_models(dest: Path, bundle: Path) -> str:
    """``dest/<bundle name>`` linking to the bundle folder: one model for the packager, copied as it is."""
    bundle = bundle.resolve()
    if not (bundle / "configs" / "inference.json").is_file():
        raise SystemExit(
            f"{bundle}: not an exported bundle folder (no configs/inference.json); "
            "make one with `cit export --format bundle`"
        )
    links = sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_symlink())
    if links:  # the packager copies what a link points to: a file from anywhere on this machine
        raise SystemExit(
            f"{bundle}: holds symbolic links ({', '.join(links[:5])}); copy the files in instead"
        )
    name = safe_name(bundle.name)
    dest.mkdir()
    (dest / name).symlink_to(bundle, target_is_directory=True)
    return name


def package(bundle: Path, tag: str, out: Path, platform: str, log_level: str | None, extra: list[str]) -> int:
    prepare_out(out)
    set_up_logging(log_level)
    model = stage_models(out / "models", bundle)
    wheel = build_toolkit_wheel(out / "wheels")
    logger.info("Toolkit wheel: %s", wheel)
    stage_app(out / "app", wheel)
    context = out / "context"
    context.mkdir()
    args = parse_args(
        [
            "monai-deploy",
            "package",
            str(out / "app"),
            "--config",
            str(DEPLOY / "app.yaml"),
            "--tag",
            tag,
            "--platform",
            platform,
            "--models",
            str(out / "models"),
            "--source",
            str(MANIFEST),
            "--sdk",
            "monai-deploy",
            *extra,
        ]
    )
    packaging = PackagingArguments(args, str(context))
    _create_app_manifest(packaging.application_manifest, str(context))
    _create_package_manifest(packaging.package_manifest, str(context))
    builder = ToolkitWheelBuilder(packaging.build_parameters, str(context), wheel)
    try:
        for parameters in packaging.platforms:
            result = builder.build(parameters)
            print(
                f"built {result.docker_tag or tag} for {parameters.platform.value}"
                + (f"; tarball {result.tarball_filename}" if result.tarball_filename else "")
            )
    except DockerStepError as ex:
        print(
            f"Build context complete in {context} (model '{model}', toolkit {wheel.name}); "
            f"stopped at the Docker step: {ex}",
            file=sys.stderr,
        )
        return DOCKER_STEP_FAILED
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", "-m", required=True, type=Path, help="an exported bundle folder")
    parser.add_argument("--tag", "-t", default="cit-classification:0.1.0", help="image name[:tag]")
    parser.add_argument("--out", type=Path, help="working folder (default dist/map/<tag>)")
    parser.add_argument("--platform", default="x86_64", help="x86_64 or sbsa (the packager's names)")
    parser.add_argument("--log-level", "-l", type=str.upper, help="DEBUG also prints the Dockerfile")
    args, extra = parser.parse_known_args(argv)
    out = (args.out or REPO / "dist" / "map" / safe_name(args.tag)).resolve()
    try:
        return package(args.models, args.tag, out, args.platform, args.log_level, extra)
    except Exception as ex:  # the packager's own errors (invalid SDK version, manifest...) included
        print(f"packaging failed before the Docker step: {type(ex).__name__}: {ex}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
