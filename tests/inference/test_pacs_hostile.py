"""`cit infer --input dicomweb+http://...` against a hostile DICOMweb server on 127.0.0.1 (Python's
http.server, real DICOM JSON for QIDO-RS, real multipart/related DICOM parts written with pydicom for
WADO-RS): a study without instances, an instance answered with HTTP 500 or 503, a connection closed
mid-transfer, an answer slower than --pacs-timeout (each an error row, the rest classified, the rerun
after the server recovers classifies them); QIDO-RS paging of 10,000 studies, a server that caps its
pages, and one that ignores offset."""

from __future__ import annotations

import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from infer_helpers import infer_args, make_dicom, read_csv

from toolkit.cli import main
from toolkit.inference.pacs.common import AUTH_ENV, PacsOptions, StudyQuery
from toolkit.inference.runner import EXIT_INPUTS_FAILED

pytest.importorskip("dicomweb_client", reason="the `pacs` extra (dicomweb-client)")

BOUNDARY = "cit-hostile-boundary"
TIMEOUT = "0.5"  # --pacs-timeout of the runs: the slow answer comes only when the test ends
UID_ROOT = "1.2.826.0.1.3680043.8.498."


@dataclass
class Pacs:
    """What the server holds and how it misbehaves; ``requests``: every path + query it was asked."""

    studies: dict[str, list[tuple[str, str, bytes]]] = field(
        default_factory=dict
    )  # UID: [(series, SOP, DICOM)]
    faults: dict[str, str] = field(default_factory=dict)  # SOP instance UID: "500" | "503" | "cut" | "slow"
    page_cap: int | None = None  # most answers per QIDO-RS page, whatever limit asks
    offset: str = "honour"  # honour | ignore (no limit: the whole answer) | same-page (even without limit)
    requests: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)  # ends the slow answers

    def qido(self, answers: list, query: dict[str, str]) -> list:
        """The page of ``answers`` this server gives for ``query`` (sliced before the DICOM JSON is made:
        allocating 10,000 datasets per request would trigger slow garbage collections in this process)."""
        limit = int(query["limit"]) if "limit" in query else None
        if self.offset == "same-page":
            limit = limit or 500
        if self.page_cap:
            limit = min(limit or self.page_cap, self.page_cap)
        start = 0 if self.offset != "honour" else int(query.get("offset", 0))
        return answers[start : None if limit is None else start + limit]


def _attribute(vr: str, value: str) -> dict:
    return {"vr": vr, "Value": [value]}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # no delayed-ACK stall between the headers and the body
    pacs: Pacs

    def log_message(self, *args) -> None:  # quiet: the test reads what matters from `pacs.requests`
        pass

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        self.pacs.requests.append(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        parts = url.path.strip("/").split("/")[1:]  # after dicom-web
        if parts == ["studies"]:
            page = self.pacs.qido(list(self.pacs.studies), query)
            return self._json([{"0020000D": _attribute("UI", s)} for s in page])
        if len(parts) == 3 and parts[2] == "instances":
            listed = [
                {
                    "0020000E": _attribute("UI", se),
                    "00080018": _attribute("UI", sop),
                    "00080060": _attribute("CS", "CT"),
                }
                for se, sop, _ in self.pacs.studies.get(parts[1], [])
            ]
            return self._json(self.pacs.qido(listed, query))
        if len(parts) == 6:
            found = [
                data
                for se, sop, data in self.pacs.studies.get(parts[1], [])
                if (se, sop) == (parts[3], parts[5])
            ]
            return self._instance(parts[5], found[0]) if found else self._answer(404, b"", "text/plain")
        self._answer(404, b"", "text/plain")

    def _json(self, answers: list[dict]) -> None:
        self._answer(200, json.dumps(answers).encode(), "application/dicom+json")

    def _instance(self, sop: str, data: bytes) -> None:
        fault = self.pacs.faults.get(sop)
        if fault in ("500", "503"):  # 503: dicomweb-client retries it, then gives up
            return self._answer(int(fault), b"database error", "text/plain")
        if fault == "slow":
            self.pacs.release.wait(60)
        body = b"".join(
            [
                f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
                data,
                f"\r\n--{BOUNDARY}--\r\n".encode(),
            ]
        )
        kind = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
        if (
            fault == "cut"
        ):  # the headers announce the whole body; half of it comes, then the connection closes
            self._answer(200, body, kind, send=len(body) // 2)
            self.close_connection = True
            return None
        self._answer(200, body, kind)

    def _answer(self, code: int, body: bytes, kind: str, send: int | None = None) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:send])
            self.wfile.flush()
        except OSError:  # the client gave up (timeout): nothing to answer
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:  # a client that left is no test failure
        pass


@pytest.fixture
def pacs(monkeypatch):
    """The hostile server, serving a fresh ``Pacs``; yields (``Pacs``, its dicomweb+http URL)."""
    monkeypatch.delenv(AUTH_ENV, raising=False)
    state = Pacs()
    server = _Server(("127.0.0.1", 0), type("Handler", (_Handler,), {"pacs": state}))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state, f"dicomweb+http://127.0.0.1:{server.server_address[1]}/dicom-web"
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()


def _add_study(pacs: Pacs, folder: Path, name: str, count: int) -> tuple[str, list[tuple[str, str]]]:
    """A study of ``count`` tiny CT instances on the server; returns its UID and (series, SOP) UIDs."""
    import pydicom

    uids, study = [], None
    for index in range(count):
        path = folder / f"{name}-{index}.dcm"
        make_dicom(path, study=name, series="s1", index=index, size=32, seed=index)
        ds = pydicom.dcmread(path)
        study = ds.StudyInstanceUID
        pacs.studies.setdefault(study, []).append(
            (ds.SeriesInstanceUID, ds.SOPInstanceUID, path.read_bytes())
        )
        uids.append((ds.SeriesInstanceUID, ds.SOPInstanceUID))
    return study, uids


def _args(bundle_dir, tiny_ckpt, url: str, out: Path) -> list[str]:
    args = infer_args(bundle_dir, tiny_ckpt, Path("unused"), out, "--pacs-timeout", TIMEOUT)
    args[args.index("--input") + 1] = url
    return args


def _rows(out: Path) -> tuple[list[dict], list[dict]]:
    jsonl = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return read_csv(out / "predictions.csv"), jsonl


def test_a_study_without_instances_is_said_in_one_line(pacs, bundle_dir, tiny_ckpt, tmp_path, capsys):
    state, url = pacs
    study, instances = _add_study(state, tmp_path, "full", 2)
    empty = UID_ROOT + "777"
    state.studies[empty] = []
    out = tmp_path / "out"
    assert main(_args(bundle_dir, tiny_ckpt, url, out)) == EXIT_INPUTS_FAILED
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if empty in line] == [
        f"cit infer: study {empty}: the PACS lists no instance"
    ]
    assert "Doe^Jane" not in err and "PAT-SECRET-42" not in err
    rows, _ = _rows(out)
    assert sorted(r["sop_instance_uid"] for r in rows) == sorted(sop for _, sop in instances)
    assert {r["status"] for r in rows} == {"ok"}


def test_failed_retrievals_are_error_rows_and_the_rerun_recovers(
    pacs, bundle_dir, tiny_ckpt, tmp_path, capsys
):
    state, url = pacs
    study, instances = _add_study(state, tmp_path, "hostile", 6)
    faults = dict(zip([sop for _, sop in instances[2:]], ["500", "503", "cut", "slow"], strict=True))
    state.faults.update(faults)
    out = tmp_path / "out"
    args = _args(bundle_dir, tiny_ckpt, url, out)

    assert main(args) == EXIT_INPUTS_FAILED
    err = capsys.readouterr().err
    assert "Doe^Jane" not in err and "PAT-SECRET-42" not in err
    for rows in _rows(out):
        assert len(rows) == 6
        by_sop = {r["sop_instance_uid"]: r for r in rows}
        for series, sop in instances:
            row = by_sop[sop]
            assert (row["path"], row["study_instance_uid"]) == (f"{study}/{series}/{sop}.dcm", study)
            assert row["status"] == ("error" if sop in faults else "ok"), row
            if sop in faults:
                assert row["reason"].startswith("not retrieved from the PACS: ") and "\n" not in row["reason"]
        reasons = {fault: by_sop[sop]["reason"] for sop, fault in faults.items()}
        assert reasons["500"].startswith("not retrieved from the PACS: HTTP 500")
        assert reasons["503"].startswith("not retrieved from the PACS: HTTP 503")
        assert "IncompleteRead" in reasons["cut"], reasons["cut"]
        assert "timed out" in reasons["slow"], reasons["slow"]
    assert not (out / "pacs" / "cache").exists()

    # the server recovers: the four are retrieved and classified, their error rows gone
    state.faults.clear()
    assert main(args) == 0, capsys.readouterr().err
    assert "4 processed now, 2 done by an earlier run" in capsys.readouterr().err
    for rows in _rows(out):
        assert sorted(r["sop_instance_uid"] for r in rows) == sorted(sop for _, sop in instances)
        assert {r["status"] for r in rows} == {"ok"}


def test_no_instance_delivered_still_writes_the_rows(pacs, bundle_dir, tiny_ckpt, tmp_path, capsys):
    state, url = pacs
    study, [(series, sop)] = _add_study(state, tmp_path, "down", 1)
    state.faults[sop] = "500"
    out = tmp_path / "out"
    assert main(_args(bundle_dir, tiny_ckpt, url, out)) == EXIT_INPUTS_FAILED
    [row] = read_csv(out / "predictions.csv")
    assert (row["path"], row["status"]) == (f"{study}/{series}/{sop}.dcm", "error")
    assert "1 studies, 0 instances retrieved" in capsys.readouterr().err


STUDIES = 10_000


@pytest.mark.parametrize(
    ("offset", "page_cap", "found", "requests"),
    [
        ("honour", None, STUDIES, lambda page: STUDIES // page + 1),  # full pages, then an empty one
        ("honour", 250, STUDIES, lambda page: STUDIES // 250 + 1),  # a server's own smaller pages
        ("ignore", None, STUDIES, lambda page: 3),  # a page, the same page, the whole answer at once
        ("same-page", None, None, lambda page: 3),  # the same page whatever is asked: what it says
    ],
)
def test_study_query_pages(pacs, offset, page_cap, found, requests):
    from toolkit.inference.pacs import dicomweb

    state, url = pacs
    uids = [f"{UID_ROOT}{index + 1}" for index in range(STUDIES)]
    state.studies = dict.fromkeys(uids, [])
    state.offset, state.page_cap = offset, page_cap
    client = dicomweb.DicomwebPacs(url, PacsOptions(timeout=float(TIMEOUT) * 10))
    answered = client.find_studies(StudyQuery())
    assert answered == sorted(uids[: found or dicomweb.QIDO_PAGE])
    assert len(state.requests) == requests(dicomweb.QIDO_PAGE), state.requests[-3:]
