"""`mvmic bench pacs`: what the gateway saves in a real PACS, and the error of the round trip.

    Orthanc (mvmic.pacs.orthanc, in a private network namespace) <-- gateway (a real service process)
      for each storage mode: every image of the split --STOW-RS through the gateway--> the PACS
        --> bytes the PACS holds (the instance as stored, read straight from Orthanc) vs the original file
        --> WADO-RS through the gateway, decoded --> largest error against the original pixels
      --> per modality and in all: bytes, saved %, ratio, max error, seconds per store and retrieve

Run it inside a private network namespace: scripts/private-network .venv/bin/mvmic bench pacs
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np
import pydicom
from pydicom.dataset import Dataset

from mvmic.corpus.manifest import Manifest
from mvmic.pacs.client import PacsClient
from mvmic.pacs.multipart import parse_related, related_body
from mvmic.pacs.orthanc import running_orthanc
from mvmic.pixels import read_dicom
from mvmic.service.process import running_service

MODES = {"lossless": {}, "near-lossless 2": {"MVMIC_STORAGE_MODE": "near-lossless", "MVMIC_STORAGE_MAX_ERROR": "2"}}
TIMEOUT_S = 600.0


def run_pacs_benchmark(corpus_dir: Path, out_dir: Path, split: str = "test", modes: tuple[str, ...] = tuple(MODES),
                       limit: int | None = None) -> dict:
    entries = Manifest.load(corpus_dir / "manifest.json").select(split)[:limit]
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for mode in modes:
        with tempfile.TemporaryDirectory() as folder, running_orthanc(Path(folder) / "orthanc") as orthanc:
            settings = {**orthanc.gateway_environment(), **MODES[mode]}
            pacs = PacsClient(orthanc.dicomweb, orthanc.auth)
            with running_service(out_dir / f"gateway-{mode.replace(' ', '-')}.log", settings) as url:
                for entry in entries:
                    rows.append({"mode": mode, "id": entry.id, "modality": entry.modality,
                                 **_round_trip(url, pacs, corpus_dir / entry.path)})
            pacs.close()
    result = {"split": split, "images": len(entries), "rows": rows, "summary": _summary(rows)}
    (out_dir / "pacs.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / "pacs.md").write_text(_table(result) + "\n")
    print(_table(result))
    return result


def _round_trip(url: str, pacs: PacsClient, path: Path) -> dict:
    original = path.read_bytes()
    body, content_type = related_body([original], "application/dicom")
    started = time.perf_counter()
    answer = httpx.post(f"{url}/dicomweb/studies", content=body, headers={"Content-Type": content_type},
                        timeout=TIMEOUT_S)
    store_s = time.perf_counter() - started
    if answer.status_code != 200:
        raise RuntimeError(f"{path.name}: the gateway answered STOW-RS with {answer.status_code}: {answer.text[:300]}")
    retrieve = Dataset.from_json(answer.json()).ReferencedSOPSequence[0].RetrieveURL
    resource = retrieve.split("/dicomweb/", 1)[1]
    stored = pacs.retrieve(resource)[0]
    started = time.perf_counter()
    decoded = httpx.get(retrieve, timeout=TIMEOUT_S, headers={"Accept": 'multipart/related; type="application/dicom"'})
    retrieve_s = time.perf_counter() - started
    decoded.raise_for_status()
    part = parse_related(decoded.content, decoded.headers["content-type"])[0].content
    pixels = read_dicom(part).pixels.astype(np.int64)
    error = int(np.abs(pixels - read_dicom(original).pixels.astype(np.int64)).max())
    stored_syntax = str(pydicom.dcmread(io.BytesIO(stored), stop_before_pixels=True).file_meta.TransferSyntaxUID)
    return {"original_bytes": len(original), "stored_bytes": len(stored), "max_error": error,
            "store_s": store_s, "retrieve_s": retrieve_s, "stored_transfer_syntax": stored_syntax}


def _summary(rows: list[dict]) -> list[dict]:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["mode"], row["modality"])].append(row)
        groups[(row["mode"], "all")].append(row)
    summary = []
    for (mode, modality), group in sorted(groups.items(), key=lambda item: (item[0][0], item[0][1] == "all")):
        before, after = sum(r["original_bytes"] for r in group), sum(r["stored_bytes"] for r in group)
        summary.append({"mode": mode, "modality": modality, "images": len(group), "original_bytes": before,
                        "stored_bytes": after, "saved_percent": 100 * (before - after) / before,
                        "ratio": before / after, "max_error": max(r["max_error"] for r in group),
                        "store_s": float(np.mean([r["store_s"] for r in group])),
                        "retrieve_s": float(np.mean([r["retrieve_s"] for r in group]))})
    return summary


def _table(result: dict) -> str:
    lines = [f"# PACS storage through the gateway: {result['images']} images of the {result['split']} split in Orthanc",
             "", ("| mode | modality | images | original MB | stored MB | saved | ratio | max error | "
                  "store s/image | retrieve s/image |"), "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {s['mode']} | {s['modality']} | {s['images']} | {s['original_bytes'] / 1e6:.2f} | "
              f"{s['stored_bytes'] / 1e6:.2f} | {s['saved_percent']:.1f} % | {s['ratio']:.2f} | {s['max_error']} | "
              f"{s['store_s']:.2f} | {s['retrieve_s']:.2f} |" for s in result["summary"]]
    return "\n".join(lines)
