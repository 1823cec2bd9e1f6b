"""A real Orthanc PACS (Debian ``orthanc``, ``orthanc-dicomweb``) started by the tests on loopback ports, with a
generated JSON configuration and its storage in a temporary folder; :class:`Orthanc` wraps its REST API."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.system_components import free_port, require_executable, wait_until_up

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@dataclass
class Orthanc:
    aet: str
    http_port: int
    dicom_port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def get(self, path: str) -> Any:
        response = httpx.get(self.url + path, timeout=30)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: Any, timeout: float = 60) -> Any:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = httpx.post(self.url + path, content=content, timeout=timeout)
        response.raise_for_status()
        return response.json()

    def file(self, instance_id: str) -> bytes:
        response = httpx.get(f"{self.url}/instances/{instance_id}/file", timeout=30)
        response.raise_for_status()
        return response.content

    def upload(self, paths: list[Path]) -> str:
        """POST every file to /instances; the Orthanc ID of their study."""
        study = ""
        for p in paths:
            study = self.post("/instances", p.read_bytes())["ParentStudy"]
        return study

    def study_id(self, study_instance_uid: str) -> str | None:
        found = self.post("/tools/lookup", study_instance_uid.encode())
        return next((f["ID"] for f in found if f["Type"] == "Study"), None)

    def series_by_modality(self, study_instance_uid: str) -> dict[str, list[str]]:
        """Modality -> instance IDs of the study (empty when the study is unknown)."""
        study = self.study_id(study_instance_uid)
        if study is None:
            return {}
        out: dict[str, list[str]] = {}
        for series in self.get(f"/studies/{study}/series"):
            out.setdefault(series["MainDicomTags"].get("Modality", ""), []).extend(series["Instances"])
        return out

    def wait_for_modalities(self, study_instance_uid: str, modalities: set[str], timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        found: dict[str, list[str]] = {}
        while time.monotonic() < deadline:
            found = self.series_by_modality(study_instance_uid)
            if modalities <= set(found):
                return found
            time.sleep(0.2)
        raise AssertionError(f"{self.aet}: modalities {sorted(found)} after {timeout} s, wanted {sorted(modalities)}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_orthanc(root: Path, aet: str, modalities: dict[str, tuple[str, int]] | None = None,
                  dicomweb: bool = True, lua_scripts: tuple[Path, ...] = (), timeout: float = 30) -> Orthanc:
    """Start Orthanc with its storage under ``root``; ``modalities``: name -> (AE title, port on 127.0.0.1);
    ``lua_scripts``: Lua scripts Orthanc runs (``OnStableStudy`` after ``StableAge`` = 1 s)."""
    exe = require_executable("Orthanc", "orthanc", "/usr/sbin/Orthanc")
    if dicomweb and not DICOMWEB_PLUGIN.is_file():
        require_executable("orthanc-dicomweb-plugin-missing", "orthanc-dicomweb")
    root.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": aet, "DicomAet": aet, "HttpPort": http_port, "DicomPort": dicom_port,
        "StorageDirectory": str(root / "storage"), "IndexDirectory": str(root / "index"),
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "HttpServerEnabled": True,
        "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True, "DicomCheckModalityHost": False,
        "DicomModalities": {name: [a, "127.0.0.1", port] for name, (a, port) in (modalities or {}).items()},
        "Plugins": [str(DICOMWEB_PLUGIN)] if dicomweb else [],
        "DicomWeb": {"Enable": dicomweb, "Root": "/dicom-web/", "EnableWado": True},
        "StableAge": 1, "SaveJobs": False, "ConcurrentJobs": 2, "HttpThreadsCount": 8,
        "StorageCompression": False, "LimitFindResults": 0, "LuaScripts": [str(p) for p in lua_scripts],
    }
    config_path = root / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log_path = root / "orthanc.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(exe), str(config_path)], stdout=log, stderr=subprocess.STDOUT, cwd=root)
    server = Orthanc(aet, http_port, dicom_port, proc, log_path)
    try:
        wait_until_up(proc, f"{server.url}/system", timeout, log_path, "Orthanc")
    except RuntimeError:
        server.stop()
        raise
    return server
