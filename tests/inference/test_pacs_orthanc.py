"""`cit infer` against a real Orthanc (Debian's `orthanc` + `orthanc-dicomweb`) started on 127.0.0.1 by
this module (orthanc_local.py): QIDO-RS query with filters, WADO-RS retrieval, one row per instance, the
DICOM SR stored back by STOW-RS and read back, a failed store kept and sent by the rerun, credentials from
the environment only; the same round trip over DIMSE (C-FIND, C-GET, C-STORE with pynetdicom); every file
of the shared DICOM data through Orthanc; a run killed mid-retrieval, then rerun.
Speed: scripts/bench_pacs.py."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.error
from pathlib import Path

import pytest
from infer_helpers import PYTHON, infer_args, make_dicom, read_csv, subprocess_env
from orthanc_local import (
    PASSWORD,
    USER,
    Orthanc,
    OrthancUnavailable,
    free_port,
    request,
    running_orthanc,
    upload,
)

from toolkit.cli import main
from toolkit.inference.operator_summary import SUMMARY_NAME
from toolkit.inference.pacs.common import AUTH_ENV, EXIT_NOT_STORED, STORE_LEDGER
from toolkit.inference.runner import EXIT_INPUTS_FAILED, EXIT_NO_INPUTS, EXIT_RUN_FAILED

dicomweb_client = pytest.importorskip("dicomweb_client", reason="the `pacs` extra (dicomweb-client)")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory) -> Orthanc:
    """A fresh Orthanc with HTTP basic authentication (orthanc_local.py)."""
    try:
        with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
            yield server
    except OrthancUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def orthanc_url(orthanc) -> str:
    return orthanc.url


@pytest.fixture(scope="module")
def pacs_studies(orthanc, tmp_path_factory) -> dict[str, list[str]]:
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
            answer = upload(orthanc, path.read_bytes())
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
    summary = json.loads((out / SUMMARY_NAME).read_text())  # what an operator's monitoring reads
    assert summary["mode"] == "pacs" and summary["exit_code"] == 0 and summary["rows"] == {"ok": 3}
    assert summary["pacs"] == {
        "studies": 1,
        "instances_retrieved": 3,
        "instances_not_retrieved": 0,
        "left_out": 0,
        "reports_sent": 1,
        "reports_already_stored": 0,
        "reports_not_stored": 0,
    }

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
    """One study per QIDO-RS page: every study once, filters held (the dates leave out the studies of the
    other tests)."""
    from toolkit.inference.pacs import dicomweb
    from toolkit.inference.pacs.common import PacsError, PacsOptions, StudyQuery

    monkeypatch.setattr(dicomweb, "QIDO_PAGE", 1)
    pacs = dicomweb.DicomwebPacs(f"dicomweb+{orthanc_url}/dicom-web", PacsOptions())
    assert len(pacs.find_studies(StudyQuery(study_date="20250101-20261231"))) == 2
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
    answer = upload(orthanc, path.read_bytes())
    uuid = json.loads(request(f"{orthanc.url}/instances/{answer['ID']}/attachments/dicom/info"))["Uuid"]
    (orthanc.storage / uuid[:2] / uuid[2:4] / uuid).unlink()
    try:
        out = tmp_path / "out"
        args = infer_args(bundle_dir, tiny_ckpt, Path("unused"), out)
        args[args.index("--input") + 1] = orthanc.dicomweb
        assert main(args) == EXIT_RUN_FAILED
        assert "the PACS did not answer the study query: HTTP 500" in capsys.readouterr().err
        assert not (out / "predictions.csv").exists() and not (out / "pacs" / "cache").exists()
    finally:  # the other tests of this module get a working PACS again
        request(f"{orthanc.url}/instances/{answer['ID']}", method="DELETE")


def test_dimse_query_retrieve_infer_and_store_report(
    orthanc, pacs_studies, bundle_dir, tiny_ckpt, tmp_path, capsys
):
    """The round trip over DIMSE: C-FIND finds ACC-2, C-GET retrieves it, C-STORE sends its SR back (after
    a first store to a closed port failed: exit code 7, sent by the rerun)."""
    pytest.importorskip("pynetdicom", reason="the `pacs` extra (pynetdicom)")
    out = tmp_path / "out"
    args = infer_args(bundle_dir, tiny_ckpt, Path("unused"), out, "--accession", "ACC-2")
    args[args.index("--input") + 1] = orthanc.dimse
    closed = f"dimse://CITTEST@127.0.0.1:{free_port()}"  # nothing listens there
    assert main([*args, "--store-sr", closed]) == EXIT_NOT_STORED
    assert "not stored in the PACS: PacsError: the PACS" in capsys.readouterr().err
    assert main([*args, "--store-sr", orthanc.dimse]) == 0, capsys.readouterr().err
    assert "DICOM SR: 1 sent" in capsys.readouterr().err
    rows = read_csv(out / "predictions.csv")
    assert sorted(r["sop_instance_uid"] for r in rows) == sorted(pacs_studies["ACC-2"])
    study_uid = rows[0]["study_instance_uid"]
    reports = _reports_in_pacs(orthanc.url, study_uid)
    assert [_predicted_classes(r) for r in reports] == [{r["sop_instance_uid"]: r["pred_name"] for r in rows}]
    assert json.loads((out / STORE_LEDGER).read_text())[f"{study_uid}.dcm"]["url"] == orthanc.dimse


# ---------------------------------------------------------------------------------------------
# every file of the shared data through Orthanc; a run killed mid-retrieval

_NOT_RETRIEVED = re.compile(r"instance (\S+) not retrieved")


def _lacks_uids(path: Path) -> bool:
    """Whether the file lacks a StudyInstanceUID, SeriesInstanceUID or SOPInstanceUID (Orthanc's keys)."""
    import pydicom

    dataset = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    return not all(dataset.get(k) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))


def _srs_in_pacs(orthanc: Orthanc, study_uid: str) -> list[str]:
    """SOPInstanceUIDs of the SR instances under ``study_uid`` (QIDO-RS)."""
    found = _client(orthanc.url).search_for_instances(
        study_instance_uid=study_uid, search_filters={"Modality": "SR"}
    )
    return [f["00080018"]["Value"][0] for f in found]


def _check_reports_stored_once(orthanc: Orthanc, out: Path) -> list[str]:
    """Each SR of ``out/sr`` is in the ledger and the only SR of its study in Orthanc; returns the studies."""
    import pydicom

    reports = sorted((out / "sr").glob("*.dcm"))
    assert sorted(json.loads((out / STORE_LEDGER).read_text())) == [p.name for p in reports]
    for path in reports:
        assert _srs_in_pacs(orthanc, path.stem) == [pydicom.dcmread(path).SOPInstanceUID], path.stem
    return [p.stem for p in reports]


def test_every_shared_dicom_file_through_orthanc(
    orthanc, shared_data, pacs_auth, bundle_dir, tiny_ckpt, tmp_path, capsys
):
    """Every DICOM file of the shared data, the broken ones included, uploaded to Orthanc: those it refuses
    are broken files or files without the UIDs it indexes by. The rest is queried, retrieved and classified:
    one row per image instance, or a line naming an instance that could not be retrieved; each study's SR
    stored and found by QIDO-RS under its study."""
    folder = shared_data / "dicom"
    if not folder.is_dir():
        pytest.skip(f"no DICOM folder in the shared data: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix != ".csv")
    refused, images, studies = {}, {}, set()  # refused: path -> Orthanc's reason; images: SOP UID -> study
    for path in files:
        try:
            answer = upload(orthanc, path.read_bytes())
        except urllib.error.HTTPError as exc:
            refused[path.relative_to(folder).as_posix()] = (
                f"HTTP {exc.code} {json.loads(exc.read())['Message']}"
            )
            continue
        tags = json.loads(request(f"{orthanc.url}/instances/{answer['ID']}/simplified-tags"))
        studies.add(tags["StudyInstanceUID"])
        if tags.get("Modality") != "SR":
            images[tags["SOPInstanceUID"]] = tags["StudyInstanceUID"]
    without_uids = {p.relative_to(folder).as_posix() for p in files if _lacks_uids(p)}
    assert without_uids <= refused.keys(), refused
    assert all(name.startswith("broken/") or name in without_uids for name in refused), refused
    assert any(name.startswith("broken/") and name not in without_uids for name in refused), refused

    out = tmp_path / "out"
    query = ["--study-uid", ",".join(sorted(studies))]  # the studies of this test only
    args = infer_args(bundle_dir, tiny_ckpt, Path("unused"), out, *query, "--store-sr", orthanc.dicomweb)
    args[args.index("--input") + 1] = orthanc.dicomweb
    assert main(args) == EXIT_INPUTS_FAILED  # the broken instances Orthanc took get error rows
    not_retrieved = set(_NOT_RETRIEVED.findall(capsys.readouterr().err))
    sops = [r["sop_instance_uid"] for r in read_csv(out / "predictions.csv")]
    assert len(sops) == len(set(sops)), "one row per instance"
    assert set(sops) | not_retrieved == images.keys()
    assert len(not_retrieved) < len(images) // 10, not_retrieved
    assert _check_reports_stored_once(orthanc, out)


# the killed run: its instances, in studies retrieved one after the other (a request per series each); cached
# when it is killed
KILL_INSTANCES, KILL_STUDIES, KILL_AFTER = 80, 8, 10


def _cached(cache: Path) -> int:
    return sum(1 for _ in cache.rglob("*.dcm")) if cache.is_dir() else 0


def test_a_run_killed_mid_retrieval_then_rerun(orthanc, pacs_auth, bundle_dir, tiny_ckpt, tmp_path, capsys):
    """SIGKILL of `cit infer --store-sr` while it retrieves (some instances in the cache, not all), then the
    same command again: one row per instance, each study's SR stored once (in Orthanc and the ledger)."""
    sops = []
    for i in range(KILL_INSTANCES):
        path = tmp_path / "upload" / f"{i}.dcm"
        sops.append(
            make_dicom(
                path, study=f"kill{i % KILL_STUDIES}", series="s", index=i, size=64, accession="ACC-KILL"
            )
        )
        assert upload(orthanc, path.read_bytes())["Status"] == "Success"
    out = tmp_path / "out"
    args = infer_args(bundle_dir, tiny_ckpt, Path("unused"), out, "--accession", "ACC-KILL")
    args[args.index("--input") + 1] = orthanc.dicomweb
    args += ["--store-sr", orthanc.dicomweb]
    cache = out / "pacs" / "cache"
    with (tmp_path / "killed.log").open("wb") as log:
        proc = subprocess.Popen(
            [PYTHON, "-m", "toolkit", *args], env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=log
        )
        deadline = time.monotonic() + 120
        while _cached(cache) < KILL_AFTER and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-2000:]
    assert KILL_AFTER <= _cached(cache) < KILL_INSTANCES, "the kill must land mid-retrieval"
    assert not (out / "predictions.csv").exists() and not (out / STORE_LEDGER).exists()

    assert main(args) == 0, capsys.readouterr().err
    assert f"DICOM SR: {KILL_STUDIES} sent, 0 already in the PACS" in capsys.readouterr().err
    rows = read_csv(out / "predictions.csv")
    assert sorted(r["sop_instance_uid"] for r in rows) == sorted(sops)
    assert sorted(_check_reports_stored_once(orthanc, out)) == sorted({r["study_instance_uid"] for r in rows})
