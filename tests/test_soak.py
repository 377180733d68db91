"""`mvmic bench soak`, short: locust clients on every route through the gateway in front of a real Orthanc.

Orthanc runs only in a private network namespace, as `make test` starts pytest (see test_pacs.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from mvmic.bench.soak import RSS_GROWTH_FLOOR_MIB, RSS_GROWTH_FRACTION, STOW_INSTANCES

ROUTES = {"compress lossy", "compress lossless", "decompress", "analyze", "STOW-RS", "WADO-RS"}


def test_short_soak_answers_every_route_without_failure_and_samples_memory(mvmic, corpus_dir: Path,
                                                                         tmp_path: Path) -> None:
    duration = 15
    done = mvmic("bench", "soak", "--corpus", str(corpus_dir), "--out", str(tmp_path), "--users", str(len(ROUTES)),
                 "--duration", str(duration), "--warmup", "5")
    result = json.loads((tmp_path / "soak.json").read_text()) if (tmp_path / "soak.json").exists() else None
    assert result is not None, done.stderr[-3000:]
    routes = {row["route"]: row for row in result["routes"]}
    assert set(routes) == ROUTES | {"all"}
    assert result["failures"] == [], result["failures"]
    for name, row in routes.items():
        assert row["requests"] > 0 and row["failures"] == 0, (name, row)
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"] + 100  # locust rounds percentiles
    assert routes["all"]["requests"] == sum(routes[name]["requests"] for name in ROUTES)
    # the WADO-RS target, then with it the STOW-RS instances, each stored again and again in place
    assert result["orthanc_before"]["instances"] == 1
    assert result["orthanc_after"]["instances"] == 1 + STOW_INSTANCES < routes["STOW-RS"]["requests"]
    samples = result["samples"]
    assert len(samples) >= duration / result["sample_interval_s"] - 1 and samples[-1]["t_s"] >= duration
    assert min(s["gateway_rss_mib"] for s in samples) > 300  # the resident models: the gateway, not a shell
    assert min(s["orthanc_rss_mib"] for s in samples) > 5
    memory = {m["process"]: m for m in result["memory"]}
    assert set(memory) == {"gateway", "orthanc"}
    for m in memory.values():
        assert m["bound_mib"] == max(RSS_GROWTH_FLOOR_MIB, RSS_GROWTH_FRACTION * m["after_warmup_mib"])
        assert m["pass"] == (m["growth_mib"] <= m["bound_mib"])
    assert result["pass"] == all(m["pass"] for m in memory.values())
    assert done.returncode == (0 if result["pass"] else 1), done.stderr[-3000:]
    assert ("Result: PASS" if result["pass"] else "Result: FAIL") in done.stdout


def test_soak_refuses_a_warmup_as_long_as_the_run(mvmic) -> None:
    done = mvmic("bench", "soak", "--duration", "30", "--warmup", "30")
    assert done.returncode == 1
    assert "mvmic: error:" in done.stderr and "warm-up < duration" in done.stderr and "Traceback" not in done.stderr
