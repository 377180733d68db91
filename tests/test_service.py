"""The service over HTTP: a real uvicorn process on 127.0.0.1, the shipped weights, real DICOMs."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import io
import os
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
import torch
from pydicom.encaps import generate_fragments

from mvmic.model.bitstream import Bitstream, LayerKind, pack_payloads
from mvmic.model.codec import MvmicCodec
from mvmic.model.quality import QUALITY_CODES
from mvmic.model.table_codec import DEFAULT_WEIGHTS
from mvmic.model.tasks.analysis import DEFAULT_HEADS, Analyzer
from mvmic.model.tasks.runtime import int8_path, onnx_path
from mvmic.pixels import read_dicom
from mvmic.service.process import free_port
from mvmic.service.settings import cpu_cores
from mvmic.transcode import MVM_TRANSFER_SYNTAX, bitstream_of_instance

TIMEOUT = 120.0


def _dicom(corpus_dir: Path, entry_id: str) -> bytes:
    return (corpus_dir / "images" / f"{entry_id}.dcm").read_bytes()


def _post(url: str, body: bytes, media_type: str, accept: str = "application/json", **params) -> httpx.Response:
    return httpx.post(url, content=body, params=params, timeout=TIMEOUT,
                      headers={"Content-Type": media_type, "Accept": accept})


def test_healthz_reports_ok_and_version(service_url: str) -> None:
    response = httpx.get(f"{service_url}/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "version": version("mvmic")}
    assert response.headers["X-Request-ID"]


def test_readyz_once_the_models_are_resident(service_url: str) -> None:
    assert httpx.get(f"{service_url}/readyz").json() == {"status": "ready"}


def test_unknown_path_is_404(service_url: str) -> None:
    assert httpx.get(f"{service_url}/nope").status_code == 404


def test_models_names_the_served_weights(service_url: str) -> None:
    described = httpx.get(f"{service_url}/v1/models").json()
    assert described["weights"]["codec"]["sha256"] == hashlib.sha256(DEFAULT_WEIGHTS.read_bytes()).hexdigest()
    assert described["weights"]["residual"]["file"] == "mvmicnet-w97-v2-residual.pt"
    assert described["operating_points"]["modes"] == ["lossy", "near-lossless", "lossless"]
    assert described["operating_points"]["quality"]["4"] == QUALITY_CODES[4]
    assert described["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu") and described["tasks"]
    # The heads through ONNX Runtime, int8 on a CPU (mvmic.model.tasks.quantize), float on CUDA.
    assert described["weights"]["heads"]["runtime"] == ("onnx" if torch.cuda.is_available() else "onnx-int8")


@pytest.mark.parametrize(("environment", "reason"), [
    ({"MVMIC_DEVICE": "cuda:7"}, "CUDA device(s) here; use auto or cpu"),
    ({"MVMIC_DEVICE": "tpu"}, "use auto, cpu, cuda or cuda:N"),
    ({"MVMIC_WEIGHTS_DIR": "{tmp}"}, "no mvmicnet-w97-v3.npz there"),
    ({"MVMIC_PORT": "eighty"}, "port"),
    ({"MVMIC_HEADS_RUNTIME": "tensorrt"}, "heads_runtime"),
    ({"MVMIC_STORAGE_QUALITY": "4"}, "MVMIC_STORAGE_QUALITY applies to storage mode lossy only"),
    ({"MVMIC_API_TOKENS": '["secret-token-1", ""]'}, "every token must be non-empty"),  # "Bearer" alone would pass
    ({"MVMIC_API_TOKENS": '["secret-token-1", "two words"]'}, "hold no whitespace"),
])
def test_serve_refuses_unusable_settings_with_a_message(tmp_path: Path, environment: dict, reason: str) -> None:
    environment = {key: value.format(tmp=tmp_path) for key, value in environment.items()}
    result = subprocess.run([sys.executable, "-m", "mvmic.cli", "serve", "--port", str(free_port())],
                            env={**os.environ, **environment}, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1 and reason in result.stderr and "Traceback" not in result.stderr
    assert "secret-token-1" not in result.stderr  # the message names the setting, never its value


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the heads run on CUDA only where torch sees a GPU")
def test_heads_on_cuda_find_what_the_cpu_finds(corpus_dir: Path) -> None:
    codec = MvmicCodec.load()
    stream = codec.compress(read_dicom(corpus_dir / "images" / "pyradiomics-lung1-030.dcm"), QUALITY_CODES[4])
    on_cpu, on_gpu = (Analyzer.load(codec, device=device).analyze(stream)[0] for device in ("cpu", "cuda:0"))
    assert np.abs(on_gpu.boxes - on_cpu.boxes).max(initial=0) < 1 and (on_gpu.mask != on_cpu.mask).mean() < 1e-3


def test_compress_json_has_the_bitstream_its_rate_and_analysis(service_url: str, corpus_dir: Path) -> None:
    source = _dicom(corpus_dir, "pyradiomics-lung1-030")
    response = _post(f"{service_url}/v1/compress", source, "application/dicom", quality=4)
    assert response.status_code == 200, response.text
    document = response.json()
    data = base64.b64decode(document["bitstream"])
    assert Bitstream.from_bytes(data).quality_code == QUALITY_CODES[4] and document["bytes"] == len(data)
    assert document["bits_per_pixel"] == pytest.approx(8 * len(data) / (512 * 512))
    assert document["compression_ratio"] > 20 and document["mode"] == "lossy" and document["max_error"] is None
    frame = document["analysis"]["frames"][0]
    assert frame["segmentation"]["size"] == [512, 512] and isinstance(frame["boxes"], list)
    served = httpx.get(f"{service_url}/v1/models", timeout=10).json()["weights"]["heads"]
    # The result names the weights that made it, how they ran and the ONNX model that ran.
    assert document["analysis"]["heads_sha256"] == served["sha256"]
    assert document["analysis"]["heads_runtime"] == served["runtime"]
    assert document["analysis"]["heads_model_sha256"] == served["model_sha256"]
    expected = onnx_path(DEFAULT_HEADS) if torch.cuda.is_available() else int8_path(DEFAULT_HEADS)
    assert served["model_sha256"] == hashlib.sha256(expected.read_bytes()).hexdigest()


def test_lossless_round_trip_through_the_service(service_url: str, corpus_dir: Path) -> None:
    source = _dicom(corpus_dir, "pyradiomics-brain2-010")
    response = _post(f"{service_url}/v1/compress", source, "application/dicom", "application/octet-stream",
                     mode="lossless")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream" and response.content[:3] == b"MVM"
    decoded = _post(f"{service_url}/v1/decompress", response.content, "application/octet-stream",
                    "application/dicom")
    assert decoded.status_code == 200 and decoded.headers["content-type"] == "application/dicom"
    original, result = pydicom.dcmread(io.BytesIO(source)), pydicom.dcmread(io.BytesIO(decoded.content))
    assert np.array_equal(result.pixel_array, original.pixel_array)
    assert result.SOPInstanceUID == original.SOPInstanceUID


def test_compress_to_dicom_encapsulates_the_bitstream(service_url: str, corpus_dir: Path) -> None:
    source = _dicom(corpus_dir, "pyradiomics-lung1-030")
    original = pydicom.dcmread(io.BytesIO(source))
    for mode, params in (("lossy", {"quality": 6}), ("near-lossless", {"max_error": 2}), ("lossless", {})):
        response = _post(f"{service_url}/v1/compress", source, "application/dicom", "application/dicom",
                         mode=mode, **params)
        assert response.status_code == 200 and response.headers["content-type"] == "application/dicom"
        stored = pydicom.dcmread(io.BytesIO(response.content))
        assert stored.file_meta.TransferSyntaxUID == MVM_TRANSFER_SYNTAX and MVM_TRANSFER_SYNTAX.startswith("2.25.")
        assert stored["PixelData"].is_undefined_length and stored["PixelData"].VR == "OB"
        fragments = list(generate_fragments(stored.PixelData))
        assert fragments[0] == b"" and all(len(f) % 2 == 0 for f in fragments)
        assert Bitstream.from_bytes(bitstream_of_instance(stored)).rows == 512
        for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "BitsStored"):
            assert stored.get(keyword) == original.get(keyword), keyword
        assert (stored.SOPInstanceUID == original.SOPInstanceUID) == (mode == "lossless")
        assert stored.get("LossyImageCompression") == ("00" if mode == "lossless" else "01")
        decoded = _post(f"{service_url}/v1/decompress", response.content, "application/dicom", "application/dicom")
        assert decoded.status_code == 200, decoded.text
        result = pydicom.dcmread(io.BytesIO(decoded.content))
        assert result.SOPInstanceUID == stored.SOPInstanceUID  # decoding changes the transfer syntax only
        assert result.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        error = np.abs(result.pixel_array.astype(np.int64) - original.pixel_array.astype(np.int64)).max()
        bounds = {"lossy": (1, None), "near-lossless": (1, 2), "lossless": (0, 0)}  # (least, most) error
        least, most = bounds[mode]
        assert error >= least and (most is None or error <= most), (mode, error)


def test_near_lossless_needs_its_bound(service_url: str, corpus_dir: Path) -> None:
    source = _dicom(corpus_dir, "pyradiomics-brain2-010")
    response = _post(f"{service_url}/v1/compress", source, "application/dicom", mode="near-lossless", max_error=2)
    assert response.status_code == 200 and response.json()["max_error"] == 2
    response = _post(f"{service_url}/v1/compress", source, "application/dicom", mode="near-lossless")
    assert response.status_code == 422 and "needs a max error" in response.json()["detail"]


def test_rate_targets_are_honoured_or_refused(service_url: str, corpus_dir: Path) -> None:
    source = _dicom(corpus_dir, "pyradiomics-brain2-010")
    original = pydicom.dcmread(io.BytesIO(source)).pixel_array.astype(np.float64)
    response = _post(f"{service_url}/v1/compress", source, "application/dicom", "application/dicom", target_psnr=45)
    assert response.status_code == 200, response.text
    decoded = pydicom.dcmread(io.BytesIO(_post(f"{service_url}/v1/decompress", response.content, "application/dicom",
                                               "application/dicom").content)).pixel_array
    peak = 2 ** int(pydicom.dcmread(io.BytesIO(source)).BitsStored) - 1
    assert 10 * np.log10(peak**2 / np.mean((decoded - original) ** 2)) >= 45
    for bad in ({"target_bpp": "inf"}, {"target_bpp": "nan"}, {"target_bpp": "0"}, {"target_psnr": "-3"}):
        assert _post(f"{service_url}/v1/compress", source, "application/dicom", **bad).status_code == 422, bad
    both = _post(f"{service_url}/v1/compress", source, "application/dicom", quality=4, target_psnr=45)
    assert both.status_code == 422 and "give one of quality" in both.json()["detail"]
    lossless = _post(f"{service_url}/v1/compress", source, "application/dicom", mode="lossless", target_psnr=45)
    assert lossless.status_code == 422 and "does not apply with a maximum error" in lossless.json()["detail"]


def test_an_image_too_small_to_analyse_is_still_compressed(service_url: str) -> None:
    from test_dicom_oddities import ct_like, dicom_instance

    tiny = dicom_instance(ct_like(9, 40).tobytes(), 9, 40, bits_stored=12)
    response = _post(f"{service_url}/v1/compress", tiny, "application/dicom", mode="lossless")
    assert response.status_code == 200, response.text
    assert response.json()["analysis"] is None and "too small to analyse" in response.json()["analysis_skipped"]
    stream = base64.b64decode(response.json()["bitstream"])
    refused = _post(f"{service_url}/v1/analyze", stream, "application/octet-stream")
    assert refused.status_code == 422 and "too small to analyse" in refused.json()["detail"]


def test_analyze_reads_a_bitstream(service_url: str, corpus_dir: Path) -> None:
    stream = _post(f"{service_url}/v1/compress", _dicom(corpus_dir, "pyradiomics-lung1-030"), "application/dicom",
                   "application/octet-stream", quality=6).content
    response = _post(f"{service_url}/v1/analyze", stream, "application/octet-stream")
    assert response.status_code == 200
    assert response.json()["quality_code"] == QUALITY_CODES[6] and len(response.json()["frames"]) == 1


def _server_timing(response: httpx.Response) -> dict[str, float]:
    steps = [entry.strip().split(";dur=") for entry in response.headers["Server-Timing"].split(",")]
    return {name: float(duration) for name, duration in steps}


def test_the_codec_routes_say_how_long_each_step_took(service_url: str, corpus_dir: Path) -> None:
    # W3C Server-Timing, in ms: what the page under /ui/ shows as encode, analysis and decode times
    source = _dicom(corpus_dir, "pyradiomics-lung1-030")
    started = time.perf_counter()
    compressed = _post(f"{service_url}/v1/compress", source, "application/dicom", quality=4)
    elapsed_ms = 1000 * (time.perf_counter() - started)
    steps = _server_timing(compressed)
    assert list(steps) == ["encode", "analysis"] and 0 < sum(steps.values()) < elapsed_ms
    stream = base64.b64decode(compressed.json()["bitstream"])
    assert list(_server_timing(_post(f"{service_url}/v1/decompress", stream, "application/octet-stream",
                                     "application/dicom"))) == ["decode"]
    assert list(_server_timing(_post(f"{service_url}/v1/analyze", stream, "application/octet-stream"))) == ["analysis"]
    octet = _post(f"{service_url}/v1/compress", source, "application/dicom", "application/octet-stream", quality=4)
    assert list(_server_timing(octet)) == ["encode"]
    instance = _post(f"{service_url}/v1/compress", source, "application/dicom", "application/dicom", quality=4)
    assert list(_server_timing(instance)) == ["encode", "instance"]


def _not_supported_dicom(corpus_dir: Path) -> bytes:
    dataset = pydicom.dcmread(corpus_dir / "images" / "pyradiomics-brain2-010.dcm")
    dataset.SamplesPerPixel = 4  # a readable DICOM with a pixel layout MVMIC does not code
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


def test_bad_input_gets_a_status_and_a_reason(service_url: str, corpus_dir: Path) -> None:
    compress, decompress = f"{service_url}/v1/compress", f"{service_url}/v1/decompress"
    cases = [
        (compress, b"not a dicom file at all", 400, "not a DICOM file"),
        (compress, _not_supported_dicom(corpus_dir), 415, "SamplesPerPixel 4 is not supported"),
        (decompress, b"MVM\x01" + bytes(60), 400, "bitstream"),
    ]
    stream = _post(compress, _dicom(corpus_dir, "pyradiomics-brain2-010"), "application/dicom",
                   "application/octet-stream").content
    damaged = bytearray(stream)
    damaged[len(stream) // 2] ^= 0x20
    cases.append((decompress, bytes(damaged), 400, "corrupted bitstream"))
    foreign = dataclasses.replace(Bitstream.from_bytes(stream), weights_fingerprint=bytes(8)).to_bytes()
    cases.append((decompress, foreign, 409, "bitstream was made by model"))
    # bad input that raised plain ValueErrors (all 400 then; now an explicit class, the rest being 500):
    # a DICOM instance MVMIC did not compress, and intact bitstreams (their CRC holds) with a damaged layer
    cases.append((decompress, _dicom(corpus_dir, "pyradiomics-brain2-010"), 400, "not an MVMIC instance"))
    parsed = Bitstream.from_bytes(stream)
    for kind, payload, reason in ((LayerKind.DICOM_HEADER, b"not deflated", "DICOM header layer is damaged"),
                                  (LayerKind.BASE, pack_payloads([b"\xff"]), "plane payload of 1 bytes")):
        layers = [layer if layer.kind != kind else dataclasses.replace(layer, payload=payload) for layer in parsed.layers]
        cases.append((decompress, dataclasses.replace(parsed, layers=layers).to_bytes(), 400, reason))
    for url, body, status, reason in cases:
        response = _post(url, body, "application/octet-stream", "*/*")
        assert response.status_code == status, (url, response.text)
        assert reason in response.json()["detail"] and "Traceback" not in response.text
    wrong_accept = _post(compress, stream, "application/dicom", "image/png")
    assert wrong_accept.status_code == 406


def test_tokens_and_body_limit(guarded_service, corpus_dir: Path) -> None:
    url = f"{guarded_service.url}/v1/compress"
    small = _dicom(corpus_dir, "pyradiomics-brain2-010")  # 131 kB of pixels
    assert len(small) < guarded_service.body_limit
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {guarded_service.token}"}):
        response = httpx.post(url, content=small, headers=headers, timeout=TIMEOUT)
        assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
    auth = {"Authorization": f"Bearer {guarded_service.token}"}
    assert httpx.post(url, content=small, headers=auth, timeout=TIMEOUT).status_code == 200
    assert httpx.get(f"{guarded_service.url}/v1/models", headers=auth).status_code == 200
    assert httpx.get(f"{guarded_service.url}/healthz").status_code == 200  # probes need no token
    large = _dicom(corpus_dir, "pyradiomics-lung1-030")  # 524 kB
    response = httpx.post(url, content=large, headers=auth, timeout=TIMEOUT)
    assert response.status_code == 413
    assert f"exceeds {guarded_service.body_limit} bytes" in response.json()["detail"]

    def chunked():  # no Content-Length: the limit must hold while the body streams in
        for start in range(0, len(large), 65536):
            yield large[start : start + 65536]

    response = httpx.post(url, content=chunked(), headers=auth, timeout=TIMEOUT)
    assert response.status_code == 413 and "content-length" not in response.request.headers


def test_metrics_count_requests_model_time_and_rates(service_url: str, corpus_dir: Path) -> None:
    source = _dicom(corpus_dir, "pyradiomics-brain2-010")
    assert _post(f"{service_url}/v1/compress", source, "application/dicom", "application/octet-stream",
                 quality=3).status_code == 200
    assert httpx.get(f"{service_url}/nope").status_code == 404
    response = httpx.get(f"{service_url}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    for line in ('mvmic_requests_total{method="POST",route="/v1/compress",status="200"}',
                 'mvmic_requests_total{method="GET",route="unmatched",status="404"}',
                 'mvmic_model_seconds_count{work="dicom_to_mvm"}', "mvmic_queue_wait_seconds_count",
                 'mvmic_batch_size_bucket{le="1.0"}', 'mvmic_bits_per_pixel_count{mode="lossy"}',
                 'mvmic_body_bytes_total{direction="in",route="/v1/compress"}',
                 'mvmic_request_seconds_bucket{le="60.0",route="/v1/compress"}'):
        assert line in text, line
    sent = [row for row in text.splitlines()
            if row.startswith('mvmic_body_bytes_total{direction="in",route="/v1/compress"}')]
    assert float(sent[0].split()[-1]) >= len(source)


def _samples(service_url: str, prefix: str) -> dict[str, float]:
    """The /metrics samples whose name starts with ``prefix``, by name with labels."""
    rows = httpx.get(f"{service_url}/metrics", timeout=TIMEOUT).text.splitlines()
    return {name: float(value) for name, value in (row.rsplit(" ", 1) for row in rows if row.startswith(prefix))}


def test_metrics_show_the_workers_and_the_jobs_waiting_and_running(service_url: str, corpus_dir: Path) -> None:
    described = _samples(service_url, "mvmic_model_")
    workers = int(described["mvmic_model_workers"])
    assert workers == cpu_cores() and described["mvmic_model_torch_threads"] == max(1, cpu_cores() // workers)
    source = _dicom(corpus_dir, "pyradiomics-brain2-010")
    running, waiting = 'mvmic_model_jobs_running{work="dicom_to_mvm"}', 'mvmic_model_jobs_waiting{work="dicom_to_mvm"}'
    seen: list[tuple[float, float]] = []  # (running, waiting) at each look while the requests are answered

    async def load() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            requests = [asyncio.create_task(client.post(f"{service_url}/v1/compress", content=source,
                                                        params={"quality": 4},
                                                        headers={"Content-Type": "application/dicom",
                                                                 "Accept": "application/octet-stream"}))
                        for _ in range(workers + 3)]
            while not all(request.done() for request in requests):
                rows = (await client.get(f"{service_url}/metrics")).text.splitlines()
                now = dict(row.rsplit(" ", 1) for row in rows if row.startswith("mvmic_model_jobs_"))
                seen.append((float(now.get(running, 0)), float(now.get(waiting, 0))))
                await asyncio.sleep(0.02)
            return await asyncio.gather(*requests)

    assert all(reply.status_code == 200 for reply in asyncio.run(load()))
    assert max(r for r, _ in seen) == workers and max(w for _, w in seen) >= 1, seen  # every worker busy, more queued
    assert all(r <= workers for r, _ in seen)
    deadline = time.monotonic() + 10
    while (after := _samples(service_url, "mvmic_model_jobs_")).get(running) and time.monotonic() < deadline:
        time.sleep(0.05)  # the gauge drops just after the answer is handed over
    assert after[running] == 0 and after[waiting] == 0


def _batch_sizes(service_url: str) -> tuple[float, float]:
    """(analyses run alone, all model calls) so far, from the batch size histogram."""
    rows = dict(row.rsplit(" ", 1) for row in httpx.get(f"{service_url}/metrics").text.splitlines()
                if row.startswith("mvmic_batch_size_"))
    return float(rows['mvmic_batch_size_bucket{le="1.0"}']), float(rows["mvmic_batch_size_count"])


def test_concurrent_analyses_share_a_batch_and_get_their_own_results(service_url: str, corpus_dir: Path) -> None:
    streams = [_post(f"{service_url}/v1/compress", _dicom(corpus_dir, entry), "application/dicom",
                     "application/octet-stream", quality=6).content
               for entry in ("pyradiomics-lung1-030", "pyradiomics-brain2-010")]
    alone = [_post(f"{service_url}/v1/analyze", stream, "application/octet-stream").json() for stream in streams]
    singles_before, calls_before = _batch_sizes(service_url)

    async def together() -> list[dict]:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            replies = await asyncio.gather(*(client.post(f"{service_url}/v1/analyze", content=streams[i % 2])
                                             for i in range(8)))
        return [reply.json() for reply in replies]

    replies = asyncio.run(together())
    singles, calls = _batch_sizes(service_url)
    assert calls - calls_before < 8 and singles - singles_before < calls - calls_before  # some ran as a batch
    for index, reply in enumerate(replies):
        expected = alone[index % 2]
        assert (reply["rows"], reply["columns"]) == (expected["rows"], expected["columns"])
        got, want = reply["frames"][0], expected["frames"][0]
        assert len(got["boxes"]) == len(want["boxes"])
        assert abs(got["segmented_pixels"] - want["segmented_pixels"]) <= 0.001 * reply["rows"] * reply["columns"]


def test_logs_carry_request_ids_and_no_patient_data(guarded_service, corpus_dir: Path) -> None:
    dataset = pydicom.dcmread(corpus_dir / "images" / "pyradiomics-brain2-010.dcm")
    dataset.PatientName, dataset.PatientID, dataset.PatientBirthDate = "Doe^Jane", "MRN-4711-X", "19700314"
    identifiers = ("Doe", "Jane", "MRN-4711-X", "19700314")
    auth = {"Authorization": f"Bearer {guarded_service.token}", "X-Request-ID": "trace-me-42"}
    url = f"{guarded_service.url}/v1/compress"
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    assert httpx.post(url, content=buffer.getvalue(), headers=auth, timeout=TIMEOUT).headers["X-Request-ID"] == \
        "trace-me-42"
    dataset.SamplesPerPixel = 4  # and a failure, whose reason is logged too
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    assert httpx.post(url, content=buffer.getvalue(), headers=auth, timeout=TIMEOUT).status_code == 415
    log = guarded_service.log.read_text()
    assert "request trace-me-42: POST /v1/compress -> 200" in log
    assert "request trace-me-42: 415 UnsupportedPixelFormatError" in log
    assert not [identifier for identifier in identifiers if identifier in log]



def test_a_server_bug_is_a_counted_500_with_the_request_id() -> None:
    # In process: a route that fails unexpectedly (as a bug would) answers 500 with the request id,
    # is logged, and is counted in mvmic_requests_total like every other answer.
    from fastapi.testclient import TestClient

    from mvmic.service.app import create_app
    from mvmic.service.settings import Settings

    app = create_app(Settings())

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    @app.get("/boom-value")
    def boom_value() -> None:  # a ValueError of no input error class is a bug too, not the client's error (400)
        raise ValueError("a bug's message, not for clients")

    client = TestClient(app, raise_server_exceptions=False)  # no lifespan: no models are loaded
    answer = client.get("/boom", headers={"X-Request-ID": "abc123"})
    assert answer.status_code == 500 and answer.headers["X-Request-ID"] == "abc123"
    assert answer.json() == {"detail": "internal server error", "request_id": "abc123"}
    counted = app.state.metrics.requests.labels("/boom", "GET", "500")._value.get()
    assert counted == 1
    answer = client.get("/boom-value", headers={"X-Request-ID": "def456"})
    assert answer.status_code == 500 and answer.json() == {"detail": "internal server error", "request_id": "def456"}
