"""The DICOMweb gateway in front of a real Orthanc (with its DICOMweb plugin), driven by dicomweb-client.

Orthanc 1.10 listens on every interface, so these tests run inside a private network namespace whose
only interface is loopback: `make test` starts pytest in one (unshare --net, ip link set lo up).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from test_dicom_oddities import ct_like, dicom_instance, ybr_422_words

from mvmic.model.tasks.organs import ORGAN_CLASSES
from mvmic.pacs.multipart import parse_related, related_body
from mvmic.pacs.orthanc import OrthancServer, running_orthanc
from mvmic.pacs.storage import CANNOT_UNDERSTAND, DOES_NOT_MATCH, PROCESSING_FAILURE
from mvmic.service.process import ServiceStartError, free_port, running_service
from mvmic.transcode import MVM_TRANSFER_SYNTAX, bitstream_of_instance

AS_STORED = (("application/dicom", "*"),)
DECODED = (("application/dicom", ExplicitVRLittleEndian),)
CT_WITH_LESION, MR, ULTRASOUND = "pyradiomics-lung1-041", "pyradiomics-brain2-008", "pydicom-US1_UNCR"


def serve_gateway(tmp_path_factory: pytest.TempPathFactory, orthanc: OrthancServer, port: int | None = None,
                  pacs_url: str | None = None, **settings: str) -> Iterator[str]:
    """The gateway in front of ``orthanc`` (reached at ``pacs_url``, default its DICOMweb root)."""
    environment = {"MVMIC_PACS_URL": pacs_url or orthanc.dicomweb, "MVMIC_PACS_USER": orthanc.auth[0],
                   "MVMIC_PACS_PASSWORD": orthanc.auth[1], **settings}
    try:
        with running_service(tmp_path_factory.mktemp("gateway") / "uvicorn.log", environment, port) as url:
            yield url
    except ServiceStartError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, orthanc: OrthancServer) -> Iterator[str]:
    """The gateway as configured by default: lossless storage, no analysis unless asked."""
    yield from serve_gateway(tmp_path_factory, orthanc)


@pytest.fixture(scope="module")
def client(gateway: str) -> DICOMwebClient:
    return DICOMwebClient(f"{gateway}/dicomweb", timeout=300)


@pytest.fixture(scope="module")
def pacs(orthanc: OrthancServer) -> DICOMwebClient:
    """Orthanc itself, bypassing the gateway: what the archive really holds."""
    client = DICOMwebClient(orthanc.dicomweb, timeout=60)
    client._session.auth = orthanc.auth
    return client


def _read(corpus_dir: Path, entry_id: str) -> Dataset:
    return pydicom.dcmread(corpus_dir / "images" / f"{entry_id}.dcm")


def _instance_path(dataset: Dataset) -> tuple[str, str, str]:
    return dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID


def _retrieve(gateway: str, dataset: Dataset, transfer_syntax: str) -> Dataset:
    """WADO-RS of one instance through the gateway in ``transfer_syntax`` (dicomweb-client refuses to ask
    for a private one)."""
    url = f"{gateway}/dicomweb/studies/{dataset.StudyInstanceUID}/series/{dataset.SeriesInstanceUID}" \
          f"/instances/{dataset.SOPInstanceUID}"
    got = httpx.get(url, timeout=120,
                    headers={"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={transfer_syntax}'})
    assert got.status_code == 200, got.text
    [part] = parse_related(got.content, got.headers["content-type"])
    return pydicom.dcmread(io.BytesIO(part.content))


def test_stored_lossless_retrieved_exact_and_as_stored(client: DICOMwebClient, pacs: DICOMwebClient, gateway: str,
                                                       corpus_dir: Path) -> None:
    originals = [_read(corpus_dir, entry) for entry in (MR, ULTRASOUND)]
    answer = client.store_instances(originals)
    assert [item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence] == \
        [original.SOPInstanceUID for original in originals]
    assert "FailedSOPSequence" not in answer
    for original in originals:
        decoded = client.retrieve_instance(*_instance_path(original), media_types=DECODED)
        assert decoded.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert np.array_equal(decoded.pixel_array, original.pixel_array)  # lossless: the stated error is 0
        assert decoded.PatientName == original.PatientName and decoded.get("LossyImageCompression") != "01"
        archived = pacs.retrieve_instance(*_instance_path(original), media_types=AS_STORED)
        assert archived.file_meta.TransferSyntaxUID == MVM_TRANSFER_SYNTAX
        assert len(bitstream_of_instance(archived)) < len(original.PixelData) / 1.5
        as_stored = _retrieve(gateway, original, MVM_TRANSFER_SYNTAX)
        assert as_stored.file_meta.TransferSyntaxUID == MVM_TRANSFER_SYNTAX
        assert bitstream_of_instance(as_stored) == bitstream_of_instance(archived)
        any_syntax = client.retrieve_instance(*_instance_path(original), media_types=AS_STORED)
        assert any_syntax.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian  # a standard one: decoded
        assert any_syntax.PixelData == original.PixelData


def test_qido_passes_through_with_retrieve_urls_of_the_gateway(client: DICOMwebClient, gateway: str,
                                                               corpus_dir: Path) -> None:
    original = _read(corpus_dir, MR)
    client.store_instances([original])
    found = client.search_for_instances(original.StudyInstanceUID, original.SeriesInstanceUID)
    assert original.SOPInstanceUID in [item["00080018"]["Value"][0] for item in found]
    # dicomweb-client sends a Host header without the port, so the retrieve URLs are read over httpx.
    found = httpx.get(f"{gateway}/dicomweb/studies/{original.StudyInstanceUID}/instances", timeout=60).json()
    assert all(item["00081190"]["Value"][0].startswith(f"{gateway}/dicomweb/studies/") for item in found)


def test_analysis_is_stored_as_seg_and_sr_referencing_the_image(client: DICOMwebClient, gateway: str,
                                                                corpus_dir: Path) -> None:
    original = _read(corpus_dir, CT_WITH_LESION)
    answer = client.store_instances([original], additional_params={"analysis": "true"})
    stored = {item.ReferencedSOPClassUID: item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence}
    assert stored[original.SOPClassUID] == original.SOPInstanceUID
    series = {item["00080060"]["Value"][0]: item["0020000E"]["Value"][0]
              for item in client.search_for_series(original.StudyInstanceUID)}
    instances = len(client.search_for_instances(original.StudyInstanceUID))
    again = client.store_instances([original], additional_params={"analysis": "true"})  # a client retrying
    assert {item.ReferencedSOPInstanceUID for item in again.ReferencedSOPSequence} == set(stored.values())
    assert len(client.search_for_series(original.StudyInstanceUID)) == len(series)  # replaced, not added
    assert len(client.search_for_instances(original.StudyInstanceUID)) == instances
    seg = hd.seg.Segmentation.from_dataset(client.retrieve_series(original.StudyInstanceUID, series["SEG"])[0])
    sr = hd.sr.ComprehensiveSR.from_dataset(client.retrieve_series(original.StudyInstanceUID, series["SR"])[0])
    assert seg.SOPInstanceUID == stored[seg.SOPClassUID] and sr.SOPInstanceUID == stored[sr.SOPClassUID]
    for derived in (seg, sr):
        assert derived.StudyInstanceUID == original.StudyInstanceUID
    source_of_seg = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert source_of_seg.ReferencedSOPInstanceUID == original.SOPInstanceUID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert evidence.ReferencedSOPInstanceUID == original.SOPInstanceUID
    # The SEG holds the analysis of the stored bitstream: the lesion mask and organ maps /v1/analyze finds in it.
    archived = _retrieve(gateway, original, MVM_TRANSFER_SYNTAX)
    analysis = httpx.post(f"{gateway}/v1/analyze", content=bitstream_of_instance(archived), timeout=120).json()
    assert [item.SegmentLabel for item in seg.SegmentSequence] == ["lesion", *ORGAN_CLASSES]
    pixels = seg.get_pixels_by_source_instance([original.SOPInstanceUID], ignore_spatial_locations=True)[0]
    frame = analysis["frames"][0]
    organ_pixels = {organ["label"]: organ["pixels"] for organ in frame["organs"]}
    assert [int(pixels[..., s].sum()) for s in range(pixels.shape[-1])] == [
        frame["segmented_pixels"], *(organ_pixels.get(name, 0) for name in ORGAN_CLASSES)]
    assert pixels.any()
    boxes = frame["boxes"]
    assert len(boxes) >= 1
    regions = [item for item in _content_items(sr) if item.ValueType == "SCOORD"]
    assert len(regions) == len(boxes)
    for region in regions:
        assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == original.SOPInstanceUID


def _content_items(dataset: Dataset) -> Iterator[Dataset]:
    for item in dataset.get("ContentSequence", []):
        yield item
        yield from _content_items(item)


def test_stow_reports_failures_per_instance(gateway: str, corpus_dir: Path) -> None:
    good = (corpus_dir / "images" / f"{MR}.dcm").read_bytes()
    body, content_type = related_body([good, b"not a DICOM file"], "application/dicom")
    answer = httpx.post(f"{gateway}/dicomweb/studies", content=body, headers={"Content-Type": content_type},
                        timeout=300)
    assert answer.status_code == 202
    dataset = Dataset.from_json(answer.json())
    assert dataset.FailedSOPSequence[0].FailureReason == CANNOT_UNDERSTAND
    assert len(dataset.ReferencedSOPSequence) == 1
    metrics = httpx.get(f"{gateway}/metrics").text
    assert 'mvmic_gateway_instances_total{outcome="failed"}' in metrics
    assert 'mvmic_gateway_bytes_total{kind="sent"}' in metrics
    other_study = f"{gateway}/dicomweb/studies/1.2.3.4"
    body, content_type = related_body([good], "application/dicom")
    answer = httpx.post(other_study, content=body, headers={"Content-Type": content_type}, timeout=300)
    assert answer.status_code == 409
    assert Dataset.from_json(answer.json()).FailedSOPSequence[0].FailureReason == DOES_NOT_MATCH
    answer = httpx.post(f"{gateway}/dicomweb/studies", content=good, headers={"Content-Type": "application/dicom"})
    assert answer.status_code == 415 and "multipart/related" in answer.json()["detail"]
    metadata = 'multipart/related; type="application/dicom+json"; boundary=B'  # STOW of JSON + bulk data
    answer = httpx.post(f"{gateway}/dicomweb/studies", content=b"--B--", headers={"Content-Type": metadata})
    assert answer.status_code == 415


def test_stow_reports_an_instance_the_pacs_cannot_parse_as_failed_and_the_others_as_stored(
        gateway: str, client: DICOMwebClient, corpus_dir: Path) -> None:
    """Found by schemathesis (make fuzz-api): Orthanc 1.10 answers HTTP 400 when it cannot parse one instance,
    with those it stored referenced and that one in no sequence; the gateway answered 502, though it had stored
    the others. Here: an instance without pixels (stored as received) and two stray bytes after its last
    element, which pydicom reads and Orthanc refuses."""
    good = (corpus_dir / "images" / f"{MR}.dcm").read_bytes()
    header = pydicom.dcmread(io.BytesIO(good))
    stored = header.SOPInstanceUID
    del header.PixelData
    header.SOPInstanceUID = header.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    stray = io.BytesIO()
    header.save_as(stray, enforce_file_format=True)
    body, content_type = related_body([good, stray.getvalue() + b"\x09\x00"], "application/dicom")
    answer = httpx.post(f"{gateway}/dicomweb/studies", content=body, headers={"Content-Type": content_type},
                        timeout=300)
    assert answer.status_code == 202, answer.text
    dataset = Dataset.from_json(answer.json())
    assert [item.ReferencedSOPInstanceUID for item in dataset.ReferencedSOPSequence] == [stored]
    [failed] = dataset.FailedSOPSequence
    assert failed.ReferencedSOPInstanceUID == header.SOPInstanceUID and failed.FailureReason == PROCESSING_FAILURE
    assert client.retrieve_instance(*_instance_path(_read(corpus_dir, MR)), media_types=AS_STORED)


def test_path_parameters_reach_the_pacs_as_they_were_sent(gateway: str, client: DICOMwebClient,
                                                          corpus_dir: Path) -> None:
    """Found by schemathesis: the gateway built the PACS's URL from the decoded request path, so a path
    parameter's characters became URL syntax: a control character made it invalid (httpx.InvalidURL, a 500),
    '?' or '#' cut the PACS's path short (a study UID ending in '#' answered for the study without it)."""
    original = _read(corpus_dir, MR)
    client.store_instances([original])
    study = original.StudyInstanceUID
    assert httpx.get(f"{gateway}/dicomweb/studies/{study}/series", timeout=60).status_code == 200
    for suffix in ("%23", "%3F", "%3Flimit=1"):  # URL syntax, once decoded
        answer = httpx.get(f"{gateway}/dicomweb/studies/{study}{suffix}/series", timeout=60)
        # the series of no study (the PACS's 4xx, or none found), never those of the study
        assert 400 <= answer.status_code < 500 or answer.json() == [], (suffix, answer.text)
        answer = httpx.get(f"{gateway}/dicomweb/studies/{study}{suffix}", timeout=60)
        assert answer.status_code == 404, (suffix, answer.text)
    for path in ("~J%2B%F0%9A%B2%934%17/series", "%C2%B6%11%F1%AA%BD%89/series/9/instances"):  # were 500s
        answer = httpx.get(f"{gateway}/dicomweb/studies/{path}", timeout=60)
        assert 200 <= answer.status_code < 500 and "json" in answer.headers["content-type"], (path, answer.text)
    for dots in ("%2E", "%2E%2E"):
        answer = httpx.get(f"{gateway}/dicomweb/studies/{dots}/series", timeout=60)
        assert answer.status_code == 422 and "names no resource" in answer.json()["detail"]


def test_qido_refusals_are_the_gateways_and_never_a_server_error(gateway: str) -> None:
    """Found by schemathesis: Orthanc 1.10 answers a negative limit or offset, or one past 2**31 - 1, with
    HTTP 500, which the gateway passed on (then as a 502: a server error for the client's malformed query);
    its refusals (4xx) came in Orthanc's words (naming the study's UID), labelled application/dicom+json."""
    for query in ("offset=-1", "limit=-1", "limit=2147483648", "offset=4294967295", "limit=1&limit=-1", "limit=%2B1",
                  "limit=abc", "limit="):
        answer = httpx.get(f"{gateway}/dicomweb/studies?{query}", timeout=60)
        assert answer.status_code == 422 and "is not a count" in answer.json()["detail"], (query, answer.text)
    assert httpx.get(f"{gateway}/dicomweb/studies?limit=2147483647&offset=0", timeout=60).status_code == 200
    refused = httpx.get(f"{gateway}/dicomweb/studies?fuzzymatching=maybe", timeout=60)
    assert refused.status_code == 400 and refused.headers["content-type"] == "application/json"
    assert refused.json()["detail"].startswith("the PACS refused to search: HTTP 400")
    missing = httpx.get(f"{gateway}/dicomweb/studies/1.2.3/metadata", timeout=60)
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/json"
    assert "1.2.3" not in missing.json()["detail"]


def test_stow_of_dicom_oddities_stores_every_instance_and_gives_each_back(gateway: str, corpus_dir: Path) -> None:
    """One request holding issue 18's inputs and a good image: each is stored, compressed or as received, none
    fails the request, and WADO-RS gives back every one with its original Pixel Data (the big-endian dose
    with its words swapped to little endian)."""
    values, overlay = ct_like(64, 64), np.zeros((64, 64), np.uint16)
    overlay[8:24, 8:56] = 1
    lut, descriptor = (np.arange(256, dtype="<u2") * 256).tobytes(), [256, 0, 16]
    dose = (np.arange(2 * 8 * 10, dtype=np.uint32) * 25_000).reshape(2, 8, 10)
    sent = [
        (corpus_dir / "images" / f"{MR}.dcm").read_bytes(),
        dicom_instance(np.random.default_rng(2).integers(0, 4096, (2, 2)).astype("<u2").tobytes(), 2, 2, bits_stored=12),
        dicom_instance((values | overlay << 12).astype("<u2").tobytes(), 64, 64, bits_stored=12),
        dicom_instance(ybr_422_words(3, 40, 48), 40, 48, bits_allocated=8, samples=3, photometric="YBR_FULL_422",
                       frames=3),
        dicom_instance((values % 256).astype("<u2").tobytes(), 64, 64, photometric="PALETTE COLOR",
                       RedPaletteColorLookupTableDescriptor=descriptor, RedPaletteColorLookupTableData=lut,
                       GreenPaletteColorLookupTableDescriptor=descriptor, GreenPaletteColorLookupTableData=lut,
                       BluePaletteColorLookupTableDescriptor=descriptor, BluePaletteColorLookupTableData=lut),
        dicom_instance(dose.astype(">u4").tobytes(), 8, 10, bits_allocated=32, frames=2, big_endian=True,
                       sop_class="1.2.840.10008.5.1.4.1.1.481.2", DoseGridScaling=1.5e-5, Modality="RTDOSE"),
    ]
    body, content_type = related_body(sent, "application/dicom")
    answer = httpx.post(f"{gateway}/dicomweb/studies", content=body, headers={"Content-Type": content_type},
                        timeout=300)
    assert answer.status_code == 200, answer.text
    originals = [pydicom.dcmread(io.BytesIO(data)) for data in sent]
    referenced = Dataset.from_json(answer.json()).ReferencedSOPSequence
    assert {str(item.ReferencedSOPInstanceUID) for item in referenced} == {str(o.SOPInstanceUID) for o in originals}
    for original in originals:
        url = (f"{gateway}/dicomweb/studies/{original.StudyInstanceUID}/series/{original.SeriesInstanceUID}"
               f"/instances/{original.SOPInstanceUID}")
        got = httpx.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'}, timeout=120)
        assert got.status_code == 200, got.text
        [part] = parse_related(got.content, got.headers["content-type"])
        given = pydicom.dcmread(io.BytesIO(part.content))
        assert given.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        if original.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian:
            assert given.PixelData == original.PixelData, original.PhotometricInterpretation
        else:
            assert np.array_equal(given.pixel_array, dose)


def test_stow_takes_a_chunked_body(gateway: str, corpus_dir: Path) -> None:
    original = (corpus_dir / "images" / f"{MR}.dcm").read_bytes()
    body, content_type = related_body([original], "application/dicom")
    chunks = (body[start:start + 4096] for start in range(0, len(body), 4096))  # no Content-Length
    answer = httpx.post(f"{gateway}/dicomweb/studies", content=chunks, headers={"Content-Type": content_type},
                        timeout=300)
    assert answer.status_code == 200, answer.text
    assert "transfer-encoding" not in answer.request.headers or answer.request.headers["transfer-encoding"] == "chunked"


def test_wado_decodes_by_default_and_refuses_what_it_cannot_give(client: DICOMwebClient, gateway: str,
                                                                  corpus_dir: Path) -> None:
    original = _read(corpus_dir, MR)
    client.store_instances([original])
    url = f"{gateway}/dicomweb/studies/{original.StudyInstanceUID}/series/{original.SeriesInstanceUID}"
    answer = httpx.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'}, timeout=120)
    assert answer.status_code == 200
    parts = parse_related(answer.content, answer.headers["content-type"])
    decoded = [pydicom.dcmread(io.BytesIO(part.content)) for part in parts]
    assert {dataset.file_meta.TransferSyntaxUID for dataset in decoded} == {ExplicitVRLittleEndian}
    same = next(dataset for dataset in decoded if dataset.SOPInstanceUID == original.SOPInstanceUID)
    assert np.array_equal(same.pixel_array, original.pixel_array)
    jpeg = httpx.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; '
                                             'transfer-syntax=1.2.840.10008.1.2.4.50'}, timeout=120)
    assert jpeg.status_code == 406 and f"transfer-syntax={MVM_TRANSFER_SYNTAX}" in jpeg.json()["detail"]
    preferred = httpx.get(url, timeout=120, headers={"Accept": 'multipart/related; type="application/dicom"; '
                          'transfer-syntax=1.2.840.10008.1.2.4.50, multipart/related; type="application/dicom"; '
                          f'transfer-syntax={MVM_TRANSFER_SYNTAX}'})  # the first it can give
    assert preferred.status_code == 200
    assert preferred.headers["content-type"].endswith(f"transfer-syntax={MVM_TRANSFER_SYNTAX}")
    assert f"Content-Type: application/dicom; transfer-syntax={MVM_TRANSFER_SYNTAX}".encode() in preferred.content
    refused = httpx.get(url, timeout=120, headers={"Accept": 'multipart/related; type="application/dicom"; '
                        f'transfer-syntax={MVM_TRANSFER_SYNTAX}; q=0, multipart/related; type="application/dicom"'})
    assert refused.headers["content-type"].endswith(f"transfer-syntax={ExplicitVRLittleEndian}")  # q=0: not that
    assert httpx.get(url, headers={"Accept": "image/png"}, timeout=60).status_code == 406
    missing = httpx.get(f"{gateway}/dicomweb/studies/1.2.3/series/4.5.6/instances/7.8.9", timeout=60)
    assert missing.status_code == 404


def test_a_pacs_pushes_a_study_through_the_gateway_and_retrieves_it_back(
        tmp_path_factory: pytest.TempPathFactory, gateway: str, pacs: DICOMwebClient, corpus_dir: Path) -> None:
    """A hospital's Orthanc with the gateway in its DICOMweb servers: its own STOW-RS client pushes a study,
    which the archive stores compressed; its WADO-RS client (which asks for transfer-syntax=*) gets the
    study back decoded, every Pixel Data as it was."""
    originals = [_read(corpus_dir, f"pyradiomics-brain2-{number:03d}") for number in (19, 20)]
    study = originals[0].StudyInstanceUID
    folder = tmp_path_factory.mktemp("hospital")
    with running_orthanc(folder, 8043, 4243, {"mvmic": {"Url": f"{gateway}/dicomweb/"}}) as hospital:
        for original in originals:
            buffer = io.BytesIO()
            original.save_as(buffer, enforce_file_format=True)
            uploaded = httpx.post(f"{hospital.url}/instances", content=buffer.getvalue(), auth=hospital.auth)
        hospital_study = uploaded.json()["ParentStudy"]
        pushed = httpx.post(f"{hospital.url}/dicom-web/servers/mvmic/stow", auth=hospital.auth, timeout=300,
                            json={"Resources": [hospital_study]})
        assert pushed.status_code == 200, pushed.text
        for original in originals:
            archived = pacs.retrieve_instance(*_instance_path(original), media_types=AS_STORED)
            assert archived.file_meta.TransferSyntaxUID == MVM_TRANSFER_SYNTAX
        assert httpx.delete(f"{hospital.url}/studies/{hospital_study}", auth=hospital.auth).status_code == 200
        retrieved = httpx.post(f"{hospital.url}/dicom-web/servers/mvmic/retrieve", auth=hospital.auth, timeout=300,
                               json={"Resources": [{"Study": study}]})
        assert retrieved.status_code == 200, retrieved.text
        back = {}
        for identifier in httpx.get(f"{hospital.url}/instances", auth=hospital.auth).json():
            data = httpx.get(f"{hospital.url}/instances/{identifier}/file", auth=hospital.auth, timeout=60).content
            dataset = pydicom.dcmread(io.BytesIO(data))
            back[dataset.SOPInstanceUID] = dataset
    assert int(retrieved.json()["ReceivedInstancesCount"]) == len(back)  # the study: these and earlier tests'
    assert {original.SOPInstanceUID for original in originals} <= set(back)
    assert {dataset.file_meta.TransferSyntaxUID for dataset in back.values()} == {ExplicitVRLittleEndian}
    for original in originals:
        assert back[original.SOPInstanceUID].PixelData == original.PixelData


def test_gateway_without_a_pacs_says_so(service_url: str) -> None:
    answer = httpx.get(f"{service_url}/dicomweb/studies", timeout=30)
    assert answer.status_code == 503 and "MVMIC_PACS_URL" in answer.json()["detail"]


def test_compress_study_replaces_originals_and_keeps_copies(mvmic, orthanc: OrthancServer, pacs: DICOMwebClient,
                                                            client: DICOMwebClient, corpus_dir: Path,
                                                            tmp_path: Path) -> None:
    originals = [_read(corpus_dir, entry) for entry in ("pyradiomics-brain2-013", "pyradiomics-brain2-014")]
    pacs.store_instances(originals)  # straight into the PACS, uncompressed
    study = originals[0].StudyInstanceUID
    command = ("pacs", "compress-study", study, "--pacs", orthanc.dicomweb, "--user", orthanc.auth[0],
               "--password", orthanc.auth[1], "--originals", str(tmp_path / "kept"))
    result = mvmic(*command)
    assert result.returncode == 0, result.stderr
    assert "saved" in result.stdout and "failed 0" in result.stdout
    for original in originals:
        archived = pacs.retrieve_instance(*_instance_path(original), media_types=AS_STORED)
        assert archived.file_meta.TransferSyntaxUID == MVM_TRANSFER_SYNTAX
        kept = pydicom.dcmread(tmp_path / "kept" / f"{original.SOPInstanceUID}.dcm")
        assert np.array_equal(kept.pixel_array, original.pixel_array)
        decoded = client.retrieve_instance(*_instance_path(original), media_types=DECODED)
        assert np.array_equal(decoded.pixel_array, original.pixel_array)
    again = mvmic(*command)  # nothing left to compress
    assert again.returncode == 0 and "compressed 0," in again.stdout
    unknown = mvmic("pacs", "compress-study", "1.2.3.4.5", "--pacs", orthanc.dicomweb, "--user", orthanc.auth[0],
                    "--password", orthanc.auth[1], "--discard-originals")
    assert unknown.returncode == 1 and "no instance of study 1.2.3.4.5" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_near_lossless_gateway_keeps_every_pixel_within_its_bound(tmp_path_factory: pytest.TempPathFactory,
                                                                  orthanc: OrthancServer, corpus_dir: Path) -> None:
    original = _read(corpus_dir, "pyradiomics-brain2-015")
    port = free_port()  # dicomweb-client's Host header leaves the port out: MVMIC_PUBLIC_URL puts it back
    for url in serve_gateway(tmp_path_factory, orthanc, port, MVMIC_STORAGE_MODE="near-lossless",
                        MVMIC_STORAGE_MAX_ERROR="2", MVMIC_PUBLIC_URL=f"http://127.0.0.1:{port}"):
        answer = DICOMwebClient(f"{url}/dicomweb", timeout=300).store_instances([original])
        stored = answer.ReferencedSOPSequence[0]
        assert stored.ReferencedSOPInstanceUID != original.SOPInstanceUID  # a lossy derivative, new UID
        assert stored.RetrieveURL.startswith(f"{url}/dicomweb/studies/")
        retrieved = httpx.get(stored.RetrieveURL, timeout=120,
                              headers={"Accept": 'multipart/related; type="application/dicom"'})
        decoded = pydicom.dcmread(io.BytesIO(parse_related(retrieved.content, retrieved.headers["content-type"])[0]
                                             .content))
        error = np.abs(decoded.pixel_array.astype(np.int64) - original.pixel_array.astype(np.int64))
        assert 0 < error.max() <= 2
        assert decoded.LossyImageCompression == "01" and "maximum error 2" in decoded.DerivationDescription
