"""The gateway and `mvmic pacs compress-study` when the PACS misbehaves, or when they are killed: no instance
lost, none stored twice, originals intact, and PS3.18 statuses (503 or 502 with Retry-After) to the client.

The faults are injected between the gateway and a real Orthanc by a TCP proxy (FaultProxy); the kills are
real SIGKILLs. Like tests/test_pacs.py, these run inside the private network namespace of `make test`.
"""

from __future__ import annotations

import io
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from test_pacs import serve_gateway

from mvmic.pacs.multipart import parse_related, related_body
from mvmic.pacs.orthanc import OrthancServer
from mvmic.pacs.storage import PROCESSING_FAILURE
from mvmic.service.process import REPO_ROOT, start_service
from mvmic.transcode import MVM_TRANSFER_SYNTAX

PACS_TIMEOUT_S = 3  # the gateway's MVMIC_PACS_TIMEOUT_S in these tests; "slow" is beyond it
PACS_RETRY_AFTER = "7"  # what the failing PACS asks for


def _answer(status: str, body: bytes, *headers: str) -> bytes:
    """An HTTP answer the fault proxy sends in the PACS's place."""
    head = [f"HTTP/1.1 {status}", *headers, f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(head).encode() + body


PACS_503 = _answer("503 Service Unavailable", b"", f"Retry-After: {PACS_RETRY_AFTER}")


class FaultProxy:
    """A TCP proxy in front of a server, with one fault at a time:

        pass    bytes relayed both ways
        down    nothing listens: connections are refused
        error   answers every request itself with ``answer`` (default: 503 with Retry-After 7), nothing reaches
                the server
        reset   relays the first 2 KiB of a request, then resets both connections (mid-STOW)
        slow    relays, but holds the server's answer back ``delay`` seconds
        hang-up closes the next connection without an answer (as a PACS closing a kept-alive connection the
                moment a request arrives on it), then relays again

    Changing the fault drops the connections open before (the gateway keeps connections alive).
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port, self.mode, self.delay, self.answer = upstream_port, "pass", 0.0, PACS_503
        self.open: set[socket.socket] = set()
        self.listener = self._listen(0)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def set(self, mode: str, delay: float = 0.0, answer: bytes = b"") -> None:
        for connection in list(self.open):
            _close(connection)
        self.delay, self.answer = delay, answer or PACS_503
        if mode == "down" and self.listener is not None:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread; close alone would not
            self.listener.close()
            self.listener = None
        elif mode != "down" and self.listener is None:
            self.listener = self._listen(self.port)
            threading.Thread(target=self._accept, daemon=True).start()
        self.mode = mode

    @staticmethod
    def _listen(port: int) -> socket.socket:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(16)
        return listener

    def _accept(self) -> None:
        listener = self.listener
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed: "down"
                return
            self.open.add(client)
            threading.Thread(target=self._handle, args=(client, self.mode), daemon=True).start()

    def _handle(self, client: socket.socket, mode: str) -> None:
        if mode == "hang-up":
            self.mode = "pass"
            try:
                client.shutdown(socket.SHUT_WR)  # an orderly end (FIN) before any answer
                client.settimeout(30)
                while client.recv(65536):  # the request, read to its end: closing with unread bytes would reset
                    pass
            except OSError:
                pass
            client.close()
            return
        if mode == "error":
            try:
                client.sendall(self.answer)
                client.shutdown(socket.SHUT_WR)
                client.settimeout(30)
                while client.recv(65536):  # the request, read to its end: closing with unread bytes would reset
                    pass
            except OSError:
                pass  # dropped by the next fault
            client.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        self.open.add(upstream)
        limit = 2048 if mode == "reset" else None
        threading.Thread(target=self._pump, args=(client, upstream, limit), daemon=True).start()
        self._pump(upstream, client, None, self.delay if mode == "slow" else 0)

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket, limit: int | None, delay: float = 0) -> None:
        relayed = 0
        try:
            while data := source.recv(65536):
                if delay:
                    time.sleep(delay)
                    delay = 0
                if limit is not None and relayed + len(data) > limit:  # mid-request
                    _close(source)
                    _close(target)
                    return
                target.sendall(data)
                relayed += len(data)
            target.shutdown(socket.SHUT_WR)  # the end of one direction, passed on (FIN)
        except OSError:
            pass


def _close(connection: socket.socket) -> None:
    """Break the connection (RST, not an orderly end) and close it; shutdown first wakes a thread blocked
    reading it, which close alone would not (the kernel keeps the socket while a read waits on it)."""
    try:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    connection.close()


@pytest.fixture(scope="module")
def proxy(orthanc: OrthancServer) -> FaultProxy:
    return FaultProxy(int(orthanc.url.rsplit(":", 1)[1]))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, orthanc: OrthancServer, proxy: FaultProxy) -> Iterator[str]:
    yield from serve_gateway(tmp_path_factory, orthanc, pacs_url=f"http://127.0.0.1:{proxy.port}/dicom-web",
                             MVMIC_PACS_TIMEOUT_S=str(PACS_TIMEOUT_S))


def _instances(corpus_dir: Path, *slices: int, series: str = "pyradiomics-brain2") -> list[bytes]:
    return [(corpus_dir / "images" / f"{series}-{number:03d}.dcm").read_bytes() for number in slices]


def _stow(gateway: str, instances: list[bytes]) -> httpx.Response:
    body, content_type = related_body(instances, "application/dicom")
    return httpx.post(f"{gateway}/dicomweb/studies", content=body, headers={"Content-Type": content_type},
                      timeout=300)


def _stored(orthanc: OrthancServer, study: str) -> dict[str, bytes]:
    """SOP Instance UID -> the instance as Orthanc holds it, for every instance of ``study``."""
    answer = httpx.post(f"{orthanc.url}/tools/find", auth=orthanc.auth, timeout=60,
                        json={"Level": "Instance", "Query": {"StudyInstanceUID": study}})
    stored = {}
    for orthanc_id in answer.json():
        data = httpx.get(f"{orthanc.url}/instances/{orthanc_id}/file", auth=orthanc.auth, timeout=60).content
        stored[str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)] = data
    return stored


def _assert_exactly_once_and_exact(gateway: str, orthanc: OrthancServer, originals: list[bytes]) -> None:
    """Orthanc holds each original, compressed, and nothing but originals sent by these tests (Orthanc keeps
    one instance per UID: a second copy would have another UID); the gateway gives back each one's Pixel Data
    unchanged."""
    datasets = [pydicom.dcmread(io.BytesIO(data)) for data in originals]
    stored = _stored(orthanc, datasets[0].StudyInstanceUID)
    assert {str(d.SOPInstanceUID) for d in datasets} <= set(stored) <= _sent_uids(originals[0])
    for original in datasets:
        assert pydicom.dcmread(io.BytesIO(stored[original.SOPInstanceUID])).file_meta.TransferSyntaxUID == \
            MVM_TRANSFER_SYNTAX
        url = (f"{gateway}/dicomweb/studies/{original.StudyInstanceUID}/series/{original.SeriesInstanceUID}"
               f"/instances/{original.SOPInstanceUID}")
        got = httpx.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'}, timeout=120)
        [part] = parse_related(got.content, got.headers["content-type"])
        assert pydicom.dcmread(io.BytesIO(part.content)).PixelData == original.PixelData


@pytest.mark.parametrize(("fault", "code"), [("down", 503), ("error", 502), ("reset", 503), ("slow", 503)])
def test_a_failing_pacs_gives_every_instance_back_as_failed_with_retry_after(
        gateway: str, orthanc: OrthancServer, proxy: FaultProxy, corpus_dir: Path, fault: str, code: int) -> None:
    originals = _instances(corpus_dir, 2, 3)
    proxy.set(fault, delay=PACS_TIMEOUT_S + 2)
    try:
        answer = _stow(gateway, originals)
        study, = {pydicom.dcmread(io.BytesIO(data)).StudyInstanceUID for data in originals}
        searched = httpx.get(f"{gateway}/dicomweb/studies", params={"StudyInstanceUID": study}, timeout=60)
        retrieved = httpx.get(f"{gateway}/dicomweb/studies/{study}", timeout=60)
    finally:
        proxy.set("pass")
    assert answer.status_code == code, (answer.headers, answer.text)
    assert answer.headers["retry-after"] == (PACS_RETRY_AFTER if fault == "error" else "10")
    assert answer.headers["warning"].startswith("299 mvmic ")
    assert "127.0.0.1" not in answer.headers["warning"]  # the PACS's address (and any credentials in it)
    failed = Dataset.from_json(answer.json()).FailedSOPSequence
    assert [item.FailureReason for item in failed] == [PROCESSING_FAILURE] * 2
    assert {item.ReferencedSOPInstanceUID for item in failed} == \
        {pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID for data in originals}
    if fault != "reset":  # a reset breaks requests with a body; these have none
        for response in (searched, retrieved):
            assert response.status_code == code and "retry-after" in response.headers, response.text
    again = _stow(gateway, originals)  # what a client does after Retry-After
    assert again.status_code == 200, again.text
    _assert_exactly_once_and_exact(gateway, orthanc, originals)


@pytest.mark.parametrize(("answer", "code", "retry_after"), [
    (_answer("500 Internal Server Error", b'{"Message": "cannot store Confidential^Patricia"}',
             "Retry-After: Fri, 01 Jan 2100 00:00:00 GMT"), 502, "years"),  # its words: a patient's name
    (_answer("500 Internal Server Error", b'{"Message": 123}', "Retry-After: \u00b2"), 502, "10"),
    (_answer("200 OK", b"{not json", "Content-Type: application/dicom+json"), 502, None),
    (_answer("200 OK", b'{"00081199": {"vr": "SQ", "Value": [1, 2]}}', "Content-Type: application/dicom+json"), 502,
     None),
    (_answer("200 OK", b"{}", "Content-Type: application/dicom+json"), 409, None),  # acknowledged nothing
    (_answer("200 OK", b""), 409, None),
])
def test_a_pacs_answering_what_dicomweb_does_not_define_is_a_bad_gateway(
        gateway: str, proxy: FaultProxy, corpus_dir: Path, answer: bytes, code: int, retry_after: str | None) -> None:
    """Never 400 (the request was good) nor 500, never success for instances the PACS did not acknowledge,
    never the PACS's own words to the client."""
    proxy.set("error", answer=answer)
    try:
        response = _stow(gateway, _instances(corpus_dir, 2, 3))
    finally:
        proxy.set("pass")
    assert response.status_code == code, (response.headers, response.text)
    reasons = [item.FailureReason for item in Dataset.from_json(response.json()).FailedSOPSequence]
    assert reasons == [PROCESSING_FAILURE] * 2
    assert "Confidential" not in response.text + str(response.headers)
    given = response.headers.get("retry-after")
    assert given == retry_after if retry_after != "years" else int(given) > 365 * 86400


def test_a_connection_the_pacs_closes_without_an_answer_is_tried_once_more(
        gateway: str, orthanc: OrthancServer, proxy: FaultProxy, corpus_dir: Path) -> None:
    # The gateway keeps its connection to the PACS alive between requests; a PACS may close one just as a request
    # arrives on it (Orthanc did, under a soak: httpx's RemoteProtocolError). The request is sent once more on a
    # fresh connection instead of failing the whole STOW with 503.
    originals = _instances(corpus_dir, 4, 5)
    proxy.set("hang-up")
    answer = _stow(gateway, originals)
    assert answer.status_code == 200, answer.text
    _assert_exactly_once_and_exact(gateway, orthanc, originals)


def test_a_slow_pacs_within_the_timeout_is_waited_for(gateway: str, orthanc: OrthancServer, proxy: FaultProxy,
                                                       corpus_dir: Path) -> None:
    original = _instances(corpus_dir, 4)
    proxy.set("slow", delay=PACS_TIMEOUT_S / 3)
    try:
        answer = _stow(gateway, original)
    finally:
        proxy.set("pass")
    assert answer.status_code == 200, answer.text
    _assert_exactly_once_and_exact(gateway, orthanc, original)


def test_the_gateway_killed_mid_stow_loses_nothing_when_the_client_sends_again(
        tmp_path: Path, orthanc: OrthancServer, corpus_dir: Path) -> None:
    environment = {"MVMIC_PACS_URL": orthanc.dicomweb, "MVMIC_PACS_USER": orthanc.auth[0],
                   "MVMIC_PACS_PASSWORD": orthanc.auth[1]}
    originals = _instances(corpus_dir, *range(5, 17))  # brain2 slices 0..22 are in the corpus
    process, url = start_service(tmp_path / "killed.log", environment)
    try:
        sending = threading.Thread(target=lambda: _quietly(_stow, url, originals), daemon=True)
        sending.start()
        _wait_for_log(tmp_path / "killed.log", "part 1 of 12")  # mid-request: compressing its parts
        process.send_signal(signal.SIGKILL)
        process.wait()
        sending.join(60)
    finally:
        process.kill()
    process, url = start_service(tmp_path / "restarted.log", environment)
    try:
        answer = _stow(url, originals)
        assert answer.status_code == 200, answer.text
        _assert_exactly_once_and_exact(url, orthanc, originals)
    finally:
        process.terminate()
        process.wait(30)


def test_compress_study_killed_mid_run_then_run_again_loses_and_duplicates_nothing(
        tmp_path: Path, orthanc: OrthancServer, corpus_dir: Path) -> None:
    originals = _instances(corpus_dir, *range(12), series="pyradiomics-brain1")
    for data in originals:  # straight into the PACS, uncompressed
        assert httpx.post(f"{orthanc.url}/instances", content=data, auth=orthanc.auth, timeout=60).status_code == 200
    study = str(pydicom.dcmread(io.BytesIO(originals[0])).StudyInstanceUID)
    command = [sys.executable, "-m", "mvmic.cli", "pacs", "compress-study", study, "--pacs", orthanc.dicomweb,
               "--user", orthanc.auth[0], "--password", orthanc.auth[1], "--originals", str(tmp_path / "kept")]
    run = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, smallest = time.monotonic() + 300, min(len(data) for data in originals)
    while run.poll() is None and time.monotonic() < deadline and not _any_compressed(orthanc, study, smallest):
        time.sleep(0.05)
    killed_mid_run = run.poll() is None
    run.kill()
    run.wait()
    assert killed_mid_run, "compress-study finished before it could be killed"
    stored = _stored(orthanc, study)
    assert 0 < sum(_syntax(data) == MVM_TRANSFER_SYNTAX for data in stored.values()) < len(originals)
    rerun = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "failed 0" in rerun.stdout
    stored = _stored(orthanc, study)
    by_uid = {str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID): data for data in originals}
    assert sorted(stored) == sorted(by_uid)
    assert {_syntax(data) for data in stored.values()} == {MVM_TRANSFER_SYNTAX}
    assert sorted(path.name for path in (tmp_path / "kept").iterdir()) == sorted(f"{uid}.dcm" for uid in by_uid)
    for uid, data in by_uid.items():
        assert (tmp_path / "kept" / f"{uid}.dcm").read_bytes() == data  # every original kept whole


def _sent_uids(one: bytes) -> set[str]:
    """The SOP Instance UIDs of the corpus slices of the study of ``one`` (the instances these tests send)."""
    study = pydicom.dcmread(io.BytesIO(one), stop_before_pixels=True).StudyInstanceUID
    corpus = Path(__file__).resolve().parent.parent / "data" / "corpus" / "images"
    headers = (pydicom.dcmread(path, stop_before_pixels=True) for path in corpus.glob("pyradiomics-brain*.dcm"))
    return {str(header.SOPInstanceUID) for header in headers if header.StudyInstanceUID == study}


def _syntax(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta.TransferSyntaxUID)


def _any_compressed(orthanc: OrthancServer, study: str, smallest_original: int) -> bool:
    answer = httpx.post(f"{orthanc.url}/tools/find", auth=orthanc.auth, timeout=60, json={
        "Level": "Instance", "Query": {"StudyInstanceUID": study}, "Expand": True})
    return any(item["FileSize"] < smallest_original for item in answer.json())  # replaced by its MVMIC instance


def _wait_for_log(log: Path, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{text!r} not in {log}"
        time.sleep(0.02)


def _quietly(function, *args) -> None:
    try:
        function(*args)
    except httpx.HTTPError:
        pass  # the server was killed under it

