"""A real Orthanc PACS (Debian's `orthanc` + `orthanc-dicomweb`) on 127.0.0.1, for the PACS tests
(test_pacs_orthanc.py) and scripts/bench_pacs.py: installed with apt-get when missing and this is root,
started with a generated configuration in a folder of its own (HTTP basic authentication, DICOMweb on,
DIMSE on), stopped at the end."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ORTHANC = "/usr/sbin/Orthanc"
PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
USER, PASSWORD = "cit", "s3cret-pw"
AET = "CITTEST"


class OrthancUnavailable(RuntimeError):
    """Orthanc is not installed and cannot be installed here (not root, no apt-get, no package)."""


@dataclass(frozen=True)
class Orthanc:
    url: str  # http://127.0.0.1:PORT (REST API; DICOMweb below /dicom-web)
    storage: Path  # its storage folder (files named by attachment UUID)
    dimse: str  # dimse://AET@127.0.0.1:PORT

    @property
    def dicomweb(self) -> str:
        """The URL `cit infer` takes: dicomweb+http://.../dicom-web."""
        return f"dicomweb+{self.url}/dicom-web"


def install_orthanc() -> None:
    """Install Debian's Orthanc when missing and this is root (as scripts/test.sh does for Chromium)."""
    if Path(ORTHANC).is_file() and Path(PLUGIN).is_file():
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise OrthancUnavailable(
            "Orthanc is missing (Debian packages orthanc, orthanc-dicomweb) and this is not root"
        )
    cmd = ["apt-get", "install", "-y", "-qq", "orthanc", "orthanc-dicomweb"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
            raise OrthancUnavailable("Orthanc could not be installed with apt-get")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url: str, data: bytes | None = None, method: str | None = None) -> bytes:
    """The answer of Orthanc's REST API (our user's credentials); raises urllib.error.HTTPError."""
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
    with urllib.request.urlopen(req, timeout=30) as answer:
        return answer.read()


def upload(orthanc: Orthanc, data: bytes) -> dict:
    """POST one DICOM file to ``/instances``: Orthanc's answer (``Status``: Success or AlreadyStored);
    raises urllib.error.HTTPError when Orthanc refuses the file."""
    return json.loads(request(f"{orthanc.url}/instances", data, "POST"))


@contextmanager
def running_orthanc(folder: Path, start_timeout: float = 30) -> Iterator[Orthanc]:
    """A fresh Orthanc keeping its database and log in ``folder``, stopped on exit; raises
    OrthancUnavailable when it cannot be installed, RuntimeError (with its log) when it does not start."""
    install_orthanc()
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "cit-test",
        "StorageDirectory": str(folder / "db"),
        "IndexDirectory": str(folder / "db"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": AET,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "OverwriteInstances": True,  # a report rewritten with new rows replaces the stored one
        "DicomModalities": {"cit": {"AET": "CIT", "Host": "127.0.0.1", "Port": 104}},  # our AE (C-GET)
        "MaximumStorageCacheSize": 0,  # every read goes to the storage folder (a file removed there fails)
        "Plugins": [PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "orthanc.json").write_text(json.dumps(config))
    log_path = folder / "orthanc.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
        orthanc = Orthanc(
            f"http://127.0.0.1:{http_port}", folder / "db", f"dimse://{AET}@127.0.0.1:{dicom_port}"
        )
        try:
            deadline = time.monotonic() + start_timeout
            while True:
                try:
                    request(f"{orthanc.url}/system")
                    break
                except (urllib.error.URLError, ConnectionError):
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"Orthanc did not start: {log_path.read_text()[-2000:]}") from None
                    time.sleep(0.1)
            yield orthanc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
