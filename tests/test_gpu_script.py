"""The GPU check (scripts/gpu-check, mvmic/bench/gpu.py) runs here as its dry run: the CPU, small counts.

What only a lent GPU machine shows (CUDA parity, frames/s there) is not tested here; this keeps the
script, its steps and results.json's shape working, and the recorded decode hashes current."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mvmic.bench.gpu import EXPECTED, FRAMES, SCHEMA, summarise_metrics

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu-check"
STEPS = ("decode_hashes", "heads_parity", "heads_throughput", "codec_throughput")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path) -> tuple[subprocess.CompletedProcess, dict]:
    """`mvmic bench gpu --dry-run --no-service` (the service step is the one that starts a server)."""
    out = tmp_path_factory.mktemp("gpu")
    result = subprocess.run([sys.executable, "-m", "mvmic.cli", "bench", "gpu", "--dry-run", "--no-service",
                             "--out", str(out), "--corpus", str(corpus_dir), "--budget-s", "120"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
                            env={k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_")})
    return result, json.loads((out / "results.json").read_text())


def test_the_shell_entry_parses_and_is_executable() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], check=False).returncode == 0
    assert os.access(SCRIPT, os.X_OK)
    text = SCRIPT.read_text()
    assert "set -euo pipefail" in text and 'carry=["data/gpu-check"]' in text and "timeout_s=" in text


def test_the_dry_run_writes_results_of_every_step(dry_run) -> None:
    result, document = dry_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert document["schema"] == SCHEMA and document["mode"] == "dry-run" and document["device"] == "cpu"
    environment = document["environment"]
    assert environment["torch"]["cuda_available"] in (True, False) and environment["onnxruntime"]["providers"]
    assert environment["table_coder"].endswith(".so") and environment["packages"]["numpy"]
    assert set(document["steps"]) == set(STEPS)
    for name in STEPS:
        assert document["steps"][name]["status"] == "pass", (name, document["steps"][name])
        assert document["steps"][name]["seconds"] >= 0
    for runtime in ("onnx", "torch"):
        parity = document["steps"]["heads_parity"]["runtimes"][runtime]
        assert parity["status"] == "pass" and parity["candidate_boxes"] > 0 and parity["worst"]["output_abs"] == 0
    heads = document["steps"]["heads_throughput"]
    assert {(row["runtime"], row["batch"]) for row in heads["rows"]} == {
        (runtime, batch) for runtime in ("torch", "onnxruntime cpu") for batch in (1, 2)}
    assert all(row["frames_per_s"] > 0 and row["ms_per_call_median"] > 0 for row in heads["rows"])
    assert heads["best_frames_per_s"] > 0 and heads["goal_met"] is None  # no goal on the CPU
    codec = document["steps"]["codec_throughput"]["rows"]
    assert {(row["work"], row["threads"]) for row in codec} == {
        (work, threads) for work in ("compress", "decompress", "decode_coarse") for threads in (1, 2)}
    assert all(row["frames_per_s"] > 0 and row["scaling"] > 0 for row in codec)
    summary = document["summary"]
    assert summary["ok"] and summary["failed"] == [] and summary["skipped"] == {} and document["elapsed_s"] > 0


def test_the_recorded_decode_hashes_are_current(dry_run) -> None:
    """scripts/gpu-check-expected.json is what the device machine must decode: regenerate it with
    `python -m mvmic.bench.gpu expected` (and commit it) whenever the codec's output changes on purpose."""
    expected = json.loads(EXPECTED.read_text())
    assert [frame["id"] for frame in expected["frames"]] == list(FRAMES)
    hashes = dry_run[1]["steps"]["decode_hashes"]
    assert hashes["mismatches"] == [], ("stale scripts/gpu-check-expected.json: run `python -m mvmic.bench.gpu expected`",
                                        hashes["mismatches"])
    assert hashes["matched"] == hashes["total"] == len(FRAMES)


def test_metrics_are_summarised_per_histogram_and_status() -> None:
    text = """# HELP mvmic_model_seconds Model compute time per call
mvmic_model_seconds_bucket{le="0.1",work="analyze_many"} 3.0
mvmic_model_seconds_count{work="analyze_many"} 4.0
mvmic_model_seconds_sum{work="analyze_many"} 0.5
mvmic_batch_size_count 2.0
mvmic_batch_size_sum 9.0
mvmic_requests_total{method="POST",route="/v1/analyze",status="200"} 4.0
mvmic_model_workers 16.0
"""
    summary = summarise_metrics(text)
    assert summary["histograms"] == {"mvmic_batch_size": {"count": 2, "mean": 4.5},
                                     'mvmic_model_seconds{work="analyze_many"}': {"count": 4, "mean": 0.125}}
    assert summary["requests"] == {'{method="POST",route="/v1/analyze",status="200"}': 4.0}
