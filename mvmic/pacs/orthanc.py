"""A real Orthanc PACS, started and stopped from Python (integration tests, `mvmic bench pacs`).

    running_orthanc(folder) --private network namespace?--> Orthanc with its DICOMweb plugin,
        storage and index in ``folder``, HTTP on a free port, basic auth --> OrthancServer
        --> terminate (kill after 10 s)

Orthanc 1.10 cannot bind to loopback only; it listens on every interface of its network
namespace. It is therefore started only inside a private network namespace, one whose only
interface is loopback (`make test` runs the tests in one: unshare --net, ip link set lo up),
so nothing outside this machine, or outside the namespace, can ever reach it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mvmic.child_process import stop, wait_until_answering

ORTHANC = "Orthanc"
PLUGINS = Path("/usr/share/orthanc/plugins")
STARTUP_TIMEOUT_S = 60.0
USER, PASSWORD = "mvmic", "mvmic-test-password"


class OrthancStartError(RuntimeError):
    """Orthanc is missing, would be reachable from outside, or did not come up."""


@dataclass(frozen=True)
class OrthancServer:
    url: str  # Orthanc's REST root
    dicomweb: str  # its DICOMweb root
    auth: tuple[str, str]
    storage: Path

    def gateway_environment(self) -> dict[str, str]:
        """The MVMIC_* settings of a gateway (mvmic.service.settings) in front of this Orthanc."""
        return {"MVMIC_PACS_URL": self.dicomweb, "MVMIC_PACS_USER": self.auth[0], "MVMIC_PACS_PASSWORD": self.auth[1]}


def network_interfaces() -> list[str]:
    # /proc/self/net is this process's namespace (/sys/class/net stays the one sysfs was mounted in).
    lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    return sorted(line.split(":")[0].strip() for line in lines)


def in_private_network() -> bool:
    """True inside a network namespace whose only interface is loopback."""
    return network_interfaces() == ["lo"]


def orthanc_configuration(folder: Path, http_port: int, dicom_port: int, dicomweb_servers: dict | None = None) -> dict:
    """Orthanc's configuration; ``dicomweb_servers`` (name -> {"Url": ..., "HttpHeaders": ...}) are the
    DICOMweb servers it can push to and retrieve from, as a PACS that uses the gateway would list it."""
    return {
        "Name": "MVMIC-TEST", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "index"),
        "HttpPort": http_port, "DicomPort": dicom_port, "RemoteAccessAllowed": True,
        "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [str(PLUGINS / "libOrthancDicomWeb.so")],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": dicomweb_servers or {}},
        # The gateway stores a lossless instance under the original's SOP Instance UID, in place of it.
        "OverwriteInstances": True, "StorageCompression": False, "HttpsVerifyPeers": False,
    }


@contextmanager
def running_orthanc(folder: Path, http_port: int = 8042, dicom_port: int = 4242,
                    dicomweb_servers: dict | None = None) -> Iterator[OrthancServer]:
    if shutil.which(ORTHANC) is None:
        raise OrthancStartError("Orthanc is not installed: apt-get install orthanc orthanc-dicomweb (make test does)")
    if not in_private_network():
        raise OrthancStartError(f"Orthanc 1.10 listens on every interface and this namespace has "
                                f"{network_interfaces()}: start it inside `unshare --net` with lo up (make test does)")
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "orthanc.json"
    config.write_text(json.dumps(orthanc_configuration(folder, http_port, dicom_port, dicomweb_servers), indent=2))
    url = f"http://127.0.0.1:{http_port}"
    with (folder / "orthanc.log").open("wb") as log:
        process = subprocess.Popen([ORTHANC, str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_answering(process, f"{url}/system", STARTUP_TIMEOUT_S, folder / "orthanc.log", OrthancStartError,
                             lambda response: response.status_code == 200, (USER, PASSWORD))
        yield OrthancServer(url, f"{url}/dicom-web", (USER, PASSWORD), folder / "storage")
    finally:
        stop(process)

