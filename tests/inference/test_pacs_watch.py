"""`cit infer --watch --input dicomweb+...` against a real Orthanc (tests/inference/orthanc_local.py): QIDO-RS
polled for studies, each retrieved once its instance count has settled, one row per instance, the cache
emptied as rows are written, a study that arrives while watching classified, a restart retrieving nothing
twice, and SIGTERM ending it cleanly with summary.json written."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from infer_helpers import infer_args, make_dicom, read_csv
from orthanc_local import PASSWORD, USER, OrthancUnavailable, running_orthanc, upload

from toolkit.cli import main
from toolkit.inference.operator_summary import SUMMARY_NAME
from toolkit.inference.pacs.common import AUTH_ENV, CACHE_FOLDER
from toolkit.inference.pacs.watch import LEDGER
from toolkit.inference.runner import EXIT_OK

pytest.importorskip("dicomweb_client", reason="the `pacs` extra (dicomweb-client)")

POLL, SETTLE = 0.3, 0.6


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    try:
        with running_orthanc(tmp_path_factory.mktemp("orthanc_watch")) as server:
            yield server
    except OrthancUnavailable as exc:
        pytest.skip(str(exc))


def _upload_study(orthanc, folder: Path, study: str, count: int) -> list[str]:
    sops = []
    for i in range(count):
        path = folder / f"{study}_{i}.dcm"
        sops.append(make_dicom(path, study=study, series="s", index=i, seed=i))
        assert upload(orthanc, path.read_bytes())["Status"] == "Success"
    return sops


def _rows(out: Path) -> list[dict]:
    return read_csv(out / "predictions.csv") if (out / "predictions.csv").is_file() else []


def _wait_for(condition, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _feeder(out: Path, steps: list[tuple[int, object]]):
    """Beside the in-process watch: for each ``(rows, action)``, wait until ``rows`` rows are written, then
    call ``action`` (if any); at the end, or on a failure, SIGTERM to this process (only to the watch's
    own handler: the default one would end pytest)."""

    def run():
        try:
            for rows, action in steps:
                _wait_for(lambda: len(_rows(out)) >= rows, 60)  # noqa: B023 - called at once
                if action is not None:
                    action()
        finally:
            _wait_for(lambda: signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None), 30)
            os.kill(os.getpid(), signal.SIGTERM)

    return run


def _watch(bundle_dir, tiny_ckpt, orthanc, out: Path, feeder) -> int:
    thread = threading.Thread(target=feeder, daemon=True)
    thread.start()
    args = infer_args(bundle_dir, tiny_ckpt, Path("unused"), out, "--watch")
    args[args.index("--input") + 1] = orthanc.dicomweb
    code = main([*args, "--poll-seconds", str(POLL), "--settle-seconds", str(SETTLE)])
    thread.join(60)
    return code


def test_watch_a_pacs_for_new_studies(bundle_dir, tiny_ckpt, orthanc, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(AUTH_ENV, f"{USER}:{PASSWORD}")
    upload_dir, out = tmp_path / "upload", tmp_path / "out"
    upload_dir.mkdir()
    first = _upload_study(orthanc, upload_dir, "71", 2) + _upload_study(orthanc, upload_dir, "72", 1)
    late: list[str] = []
    arrives = lambda: late.extend(_upload_study(orthanc, upload_dir, "73", 2))  # noqa: E731
    # a study arrives while watching; the watch stops once it has its rows
    assert _watch(bundle_dir, tiny_ckpt, orthanc, out, _feeder(out, [(3, arrives), (5, None)])) == EXIT_OK
    log = capsys.readouterr().err
    rows = _rows(out)
    assert sorted(Path(r["path"]).stem for r in rows) == sorted(first + late), log
    assert {r["status"] for r in rows} == {"ok"}
    assert not any((out / CACHE_FOLDER).rglob("*.dcm")), "instances stay in the cache after their rows"
    assert len(json.loads((out / LEDGER).read_text())) == 3
    summary = json.loads((out / SUMMARY_NAME).read_text())
    assert summary["mode"] == "watch" and summary["exit_code"] == EXIT_OK and summary["rows"] == {"ok": 5}
    assert "Doe" not in log and "PAT-SECRET" not in log  # make_dicom's patient never reaches the log

    # a restart retrieves nothing it already has: no new row, nothing classified
    pause = (0, lambda: time.sleep(4 * POLL + SETTLE))
    assert _watch(bundle_dir, tiny_ckpt, orthanc, out, _feeder(out, [pause])) == EXIT_OK
    log = capsys.readouterr().err
    assert len(_rows(out)) == 5 and "instances retrieved" not in log and "new:" not in log, log


def test_watch_refuses_dimse_and_reports(bundle_dir, tiny_ckpt, tmp_path, capsys):
    args = infer_args(bundle_dir, tiny_ckpt, Path("unused"), tmp_path / "out", "--watch")
    args[args.index("--input") + 1] = "dimse://PACS@127.0.0.1:11112"
    assert main(args) == 2 and "not DIMSE" in capsys.readouterr().err
    args[args.index("--input") + 1] = "dicomweb+http://127.0.0.1:1/dicom-web"
    assert main([*args, "--store-sr", "dicomweb+http://127.0.0.1:1/dicom-web"]) == 2
