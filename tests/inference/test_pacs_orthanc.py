"""`cit infer` against a real Orthanc (Debian's `orthanc` + `orthanc-dicomweb`) started on 127.0.0.1 by
this module: QIDO-RS query with filters, WADO-RS retrieval, one row per instance, the DICOM SR stored
back by STOW-RS and read back, a failed store kept and sent by the rerun, credentials from the
environment only; the same round trip over DIMSE (C-FIND, C-GET, C-STORE with pynetdicom)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from infer_helpers import infer_args, make_dicom, read_csv

from toolkit.cli import main
from toolkit.inference.pacs.common import AUTH_ENV, EXIT_NOT_STORED, STORE_LEDGER
from toolkit.inference.runner import EXIT_NO_INPUTS, EXIT_RUN_FAILED

dicomweb_client = pytest.importorskip("dicomweb_client", reason="the `pacs` extra (dicomweb-client)")

ORTHANC = "/usr/sbin/Orthanc"
PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
USER, PASSWORD = "cit", "s3cret-pw"


def _install_orthanc() -> None:
    """Install Debian's Orthanc when missing and this is root (as scripts/test.sh does for Chromium)."""
    if Path(ORTHANC).is_file() and Path(PLUGIN).is_file():
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("Orthanc is missing (Debian packages orthanc, orthanc-dicomweb) and this is not root")
    cmd = ["apt-get", "install", "-y", "-qq", "orthanc", "orthanc-dicomweb"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
            pytest.skip("Orthanc could not be installed with apt-get")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, data: bytes | None = None, method: str | None = None) -> bytes:
    request = urllib.request.Request(url, data=data, method=method)
    token = __import__("base64").b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.read()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """A fresh Orthanc with HTTP basic authentication; yields its base URL (http://...), storage folder and
    DIMSE URL."""
    _install_orthanc()
    folder = tmp_path_factory.mktemp("orthanc")
    http_port, dicom_port = _free_port(), _free_port()
    config = {
        "Name": "cit-test",
        "StorageDirectory": str(folder / "db"),
        "IndexDirectory": str(folder / "db"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "CITTEST",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "OverwriteInstances": True,  # a report rewritten with new rows replaces the stored one
        "DicomModalities": {"cit": {"AET": "CIT", "Host": "127.0.0.1", "Port": 104}},  # our AE (C-GET)
        "MaximumStorageCacheSize": 0,  # every read goes to the storage folder (a file removed there fails)
        "Plugins": [PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = (folder / "orthanc.log").open("wb")
    proc = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _request(f"{base}/system")
                break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"Orthanc did not start: {(folder / 'orthanc.log').read_text()[-2000:]}")
                time.sleep(0.1)
        yield {"url": base, "storage": folder / "db", "dimse": f"dimse://CITTEST@127.0.0.1:{dicom_port}"}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def orthanc_url(orthanc) -> str:
    return orthanc["url"]


@pytest.fixture(scope="module")
def pacs_studies(orthanc_url, tmp_path_factory) -> dict[str, list[str]]:
    """Two CT studies uploaded to Orthanc (REST API): {accession: [SOPInstanceUIDs]}; ACC-1 of 2026,
    ACC-2 of 2025."""
    import pydicom

    folder = tmp_path_factory.mktemp("upload")
    studies = {"ACC-1": [], "ACC-2": []}
    for study, (accession, count, date) in enumerate((("ACC-1", 3, "20260315"), ("ACC-2", 2, "20250101"))):
        for i in range(count):
            path = folder / f"{accession}_{i}.dcm"
            studies[accession].append(
                make_dicom(path, study=f"pacs{study}", series="s", index=i, seed=i, accession=accession)
            )
            dataset = pydicom.dcmread(path)
            dataset.StudyDate = date
            dataset.save_as(path)
            answer = json.loads(_request(f"{orthanc_url}/instances", path.read_bytes(), "POST"))
            assert answer["Status"] == "Success", answer
    return studies


@pytest.fixture
def pacs_auth(monkeypatch):
    monkeypatch.setenv(AUTH_ENV, f"{USER}:{PASSWORD}")


def _client(orthanc: str):
    import requests

    session = requests.Session()
    session.auth = (USER, PASSWORD)
    return dicomweb_client.DICOMwebClient(f"{orthanc}/dicom-web", session=session)


def _reports_in_pacs(orthanc: str, study_uid: str) -> list:
    """The SR instances Orthanc holds under ``study_uid``, as pydicom datasets (QIDO-RS + WADO-RS)."""
    client = _client(orthanc)
    found = client.search_for_instances(study_instance_uid=study_uid, search_filters={"Modality": "SR"})
    return [
        client.retrieve_instance(study_uid, f["0020000E"]["Value"][0], f["00080018"]["Value"][0])
        for f in found
    ]


def _predicted_classes(report) -> dict[str, str]:
    """{referenced SOPInstanceUID: predicted class name} of a TID 1500 report, read with highdicom (the
    class is each measurement group's finding type, DCM 121071 'Finding')."""
    import highdicom as hd

    sr = hd.sr.Comprehensive3DSR.from_dataset(report)
    return {
        group.source_images[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID: group.finding_type.meaning
        for group in sr.content.get_image_measurement_groups()
    }


def test_query_retrieve_infer_and_store_report(
    orthanc_url, pacs_studies, pacs_auth, bundle_dir, tiny_ckpt, tmp_path, capsys
):
    out = tmp_path / "out"
    url = f"dicomweb+{orthanc_url}/dicom-web"
    query = ["--study-date", "20260101-20261231", "--modality", "CT"]
    args = infer_args(bundle_dir, tiny_ckpt, Path("unused"), out, *query, "--store-sr", url)
    args[args.index("--input") + 1] = url
    assert main(args) == 0, capsys.readouterr().err
    rows = read_csv(out / "predictions.csv")
    assert sorted(r["sop_instance_uid"] for r in rows) == sorted(pacs_studies["ACC-1"])  # the filter held
    assert {r["status"] for r in rows} == {"ok"}
    assert not (out / "pacs" / "cache").exists(), "the cache is deleted after a successful run"
    study_uid = rows[0]["study_instance_uid"]
    reports = _reports_in_pacs(orthanc_url, study_uid)
    assert len(reports) == 1
    assert _predicted_classes(reports[0]) == {r["sop_instance_uid"]: r["pred_name"] for r in rows}
    assert json.loads((out / STORE_LEDGER).read_text()).keys() == {f"{study_uid}.dcm"}
    assert PASSWORD not in capsys.readouterr().err

    # rerun: nothing classified again, the report not sent again
    assert main(args) == 0
    log = capsys.readouterr().err
    assert "0 processed now, 3 done by an earlier run" in log
    assert "0 sent, 1 already in the PACS" in log
    assert len(read_csv(out / "predictions.csv")) == 3

    # queries nothing matches: said in one line, exit code 6, nothing written
    args[args.index("--output") + 1] = str(tmp_path / "none")
    args[args.index("CT")] = "MR"
    assert main(args) == EXIT_NO_INPUTS
    assert "no instance of these studies passes the filters" in capsys.readouterr().err
    args[args.index("20260101-20261231")] = "20270101-"
    assert main(args) == EXIT_NO_INPUTS
    assert "no study in the PACS matches the query" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_failed_store_is_kept_and_sent_by_the_rerun(
    orthanc_url, pacs_studies, pacs_auth, bundle_dir, tiny_ckpt, tmp_path, capsys
):
    out = tmp_path / "out"
    url = f"dicomweb+{orthanc_url}/dicom-web"
    wrong = f"dicomweb+{orthanc_url}/no-dicom-web-here"  # answered 404 (a closed port is retried for ~30 s)
    args = infer_args(bundle_dir, tiny_ckpt, Path("unused"), out, "--accession", "ACC-2", "--keep-cache")
    args[args.index("--input") + 1] = url
    assert main([*args, "--store-sr", wrong]) == EXIT_NOT_STORED
    assert "not stored in the PACS: HTTP 404" in capsys.readouterr().err
    rows = read_csv(out / "predictions.csv")
    study_uid = rows[0]["study_instance_uid"]
    assert (out / "sr" / f"{study_uid}.dcm").is_file(), "the report stays on disk"
    assert not (out / STORE_LEDGER).exists()
    assert len(list((out / "pacs" / "cache").rglob("*.dcm"))) == 2, "--keep-cache keeps the instances"
    assert _reports_in_pacs(orthanc_url, study_uid) == []

    assert main([*args, "--store-sr", url]) == 0
    assert "1 sent, 0 already in the PACS" in capsys.readouterr().err
    assert sorted(r["sop_instance_uid"] for r in read_csv(out / "predictions.csv")) == sorted(
        pacs_studies["ACC-2"]
    )
    assert len(_reports_in_pacs(orthanc_url, study_uid)) == 1


def test_credentials_only_from_the_environment(
    orthanc_url, pacs_studies, bundle_dir, tiny_ckpt, tmp_path, capsys
):
    out = tmp_path / "out"
    args = infer_args(bundle_dir, tiny_ckpt, Path("unused"), out)
    host = orthanc_url.removeprefix("http://")
    args[args.index("--input") + 1] = f"dicomweb+http://{USER}:{PASSWORD}@{host}/dicom-web"
    assert main(args) == EXIT_RUN_FAILED
    err = capsys.readouterr().err
    assert "credentials in a URL are refused" in err and PASSWORD not in err
    # without credentials the PACS answers 401: the run stops in one line, nothing written
    args[args.index("--input") + 1] = f"dicomweb+{orthanc_url}/dicom-web"
    assert main(args) == EXIT_RUN_FAILED
    assert "401" in capsys.readouterr().err
    assert not (out / "predictions.csv").exists()


def test_query_pages(orthanc_url, pacs_studies, pacs_auth, monkeypatch):
    """One study per QIDO-RS page: every study once, filters held."""
    from toolkit.inference.pacs import dicomweb
    from toolkit.inference.pacs.common import PacsError, PacsOptions, StudyQuery

    monkeypatch.setattr(dicomweb, "QIDO_PAGE", 1)
    pacs = dicomweb.DicomwebPacs(f"dicomweb+{orthanc_url}/dicom-web", PacsOptions())
    assert len(pacs.find_studies(StudyQuery())) == 2
    assert len(pacs.find_studies(StudyQuery(accession="ACC-2", study_date="-20251231"))) == 1
    assert pacs.find_studies(StudyQuery(accession="ACC-2", study_date="20260101-")) == []
    with pytest.raises(PacsError, match="expected YYYYMMDD"):
        pacs.find_studies(StudyQuery(study_date="2026"))


def test_a_pacs_failing_the_query_stops_the_run_in_one_line(
    orthanc, pacs_studies, pacs_auth, bundle_dir, tiny_ckpt, tmp_path, capsys
):
    """A study whose stored file is gone from Orthanc's storage makes Orthanc answer every study query
    (QIDO-RS) with HTTP 500: the run stops in one line (exit code 1) and writes no result."""
    path = tmp_path / "upload" / "0.dcm"
    make_dicom(path, study="pacs-broken", series="s", index=0, accession="ACC-3")
    answer = json.loads(_request(f"{orthanc['url']}/instances", path.read_bytes(), "POST"))
    uuid = json.loads(_request(f"{orthanc['url']}/instances/{answer['ID']}/attachments/dicom/info"))["Uuid"]
    (orthanc["storage"] / uuid[:2] / uuid[2:4] / uuid).unlink()
    try:
        out = tmp_path / "out"
        args = infer_args(bundle_dir, tiny_ckpt, Path("unused"), out)
        args[args.index("--input") + 1] = f"dicomweb+{orthanc['url']}/dicom-web"
        assert main(args) == EXIT_RUN_FAILED
        assert "the PACS did not answer the study query: HTTP 500" in capsys.readouterr().err
        assert not (out / "predictions.csv").exists() and not (out / "pacs" / "cache").exists()
    finally:  # the other tests of this module get a working PACS again
        _request(f"{orthanc['url']}/instances/{answer['ID']}", method="DELETE")


def test_dimse_query_retrieve_infer_and_store_report(
    orthanc, pacs_studies, bundle_dir, tiny_ckpt, tmp_path, capsys
):
    """The round trip over DIMSE: C-FIND finds ACC-2, C-GET retrieves it, C-STORE sends its SR back (after
    a first store to a closed port failed: exit code 7, sent by the rerun)."""
    pytest.importorskip("pynetdicom", reason="the `pacs` extra (pynetdicom)")
    out = tmp_path / "out"
    args = infer_args(bundle_dir, tiny_ckpt, Path("unused"), out, "--accession", "ACC-2")
    args[args.index("--input") + 1] = orthanc["dimse"]
    closed = f"dimse://CITTEST@127.0.0.1:{_free_port()}"  # nothing listens there
    assert main([*args, "--store-sr", closed]) == EXIT_NOT_STORED
    assert "not stored in the PACS: PacsError: the PACS" in capsys.readouterr().err
    assert main([*args, "--store-sr", orthanc["dimse"]]) == 0, capsys.readouterr().err
    assert "DICOM SR: 1 sent" in capsys.readouterr().err
    rows = read_csv(out / "predictions.csv")
    assert sorted(r["sop_instance_uid"] for r in rows) == sorted(pacs_studies["ACC-2"])
    study_uid = rows[0]["study_instance_uid"]
    reports = _reports_in_pacs(orthanc["url"], study_uid)
    assert [_predicted_classes(r) for r in reports] == [{r["sop_instance_uid"]: r["pred_name"] for r in rows}]
    assert json.loads((out / STORE_LEDGER).read_text())[f"{study_uid}.dcm"]["url"] == orthanc["dimse"]
