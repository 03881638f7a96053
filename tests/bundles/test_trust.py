"""A bundle folder from elsewhere is code: `cit infer` runs only what this toolkit's own bundles hold
unless told to trust the folder (toolkit.bundle.trust)."""

from __future__ import annotations

import json
import shutil

from monai.bundle import ConfigParser

from tests.bundles.bundle_helpers import REPO_ROOT
from toolkit.bundle.configs import read_config
from toolkit.bundle.trust import ALLOWED_FILE, repository_allowed, untrusted_entries
from toolkit.cli import main


def test_the_allow_list_is_what_the_repository_bundles_hold():
    """Regenerate with `python scripts/update_bundle_allowlist.py` after changing a config."""
    assert repository_allowed(REPO_ROOT) == json.loads(ALLOWED_FILE.read_text()), (
        "run: python scripts/update_bundle_allowlist.py"
    )


def _foreign(tmp_path, payload: str):
    """An exported-looking copy of resnet18_brain_ct (base expanded) whose inference.json runs ``payload``."""
    folder = tmp_path / "from_elsewhere"
    shutil.copytree(
        REPO_ROOT / "bundles" / "resnet18_brain_ct", folder, ignore=shutil.ignore_patterns("models", "output")
    )
    for path in (folder / "configs").glob("*.json"):
        if path.name != "metadata.json":
            parser = ConfigParser(read_config(path))
            parser.resolve_macro_and_relative_ids()
            path.write_text(json.dumps(parser.get()))
    config = folder / "configs" / "inference.json"
    doc = json.loads(config.read_text())
    doc["class_names"] = payload
    config.write_text(json.dumps(doc))
    return folder


def test_cit_infer_refuses_a_foreign_bundle_holding_other_code(tmp_path, capsys):
    marker = tmp_path / "ran"
    folder = _foreign(tmp_path, f"$open({str(marker)!r}, 'w').close() or @model_info.class_names")
    (tmp_path / "in").mkdir()
    args = [
        "infer",
        "--bundle",
        str(folder),
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / "out"),
    ]
    assert main(args) != 0 and not marker.exists()
    err = capsys.readouterr().err
    assert (
        f"{folder / 'configs' / 'inference.json'}: code this toolkit's bundles do not hold: class_names: $open("
        in err
    )
    assert "--trust-bundle" in err and len(err.strip().splitlines()) == 1
    # told to trust it, the same run gets past the check (and stops later: this copy has no weights)
    assert main(args + ["--trust-bundle"]) != 0
    assert "do not hold" not in capsys.readouterr().err


def test_a_component_run_under_a_debugger_is_not_on_the_list():
    """``_mode_: debug`` or ``_debug_`` would stop a service in pdb, waiting on a console nobody reads."""
    config = {
        "a": {"_target_": "SimpleInferer", "_mode_": "debug"},
        "b": {"_target_": "SimpleInferer", "_debug_": True},
        "c": {"_target_": "SimpleInferer", "_mode_": "callable"},
    }
    assert untrusted_entries(config) == ["a#_mode_: _mode_ 'debug'", "b#_debug_: _debug_ True"]
