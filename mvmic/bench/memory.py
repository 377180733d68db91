"""`mvmic bench memory`: peak memory of MVMICNet on large radiographs (2000x2000, 3000x2600).

    parent: for each size and quality --spawn--> child process (fresh interpreter)
      child: CR of the corpus resized to the size --compress--> .mvm --decompress--> pixels
             prints its own peak RSS (ru_maxrss) before coding, after encoding, after decoding
    parent: table + memory.json

Each run is its own process so that one size's peak cannot hide inside another's, and
the peak is the whole process (interpreter, torch, the image itself): what a deployment pays.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mvmic.corpus.manifest import Manifest
from mvmic.model.rate_distortion import bits_per_pixel

SOURCE = "pydicom-RG1_UNCR"  # 1955 x 1841 CR, 15 bits stored, train split
SIZES = ((2000, 2000), (3000, 2600))
QUALITIES = (1, 8)
BUDGET_MB = 4096


def run_memory_benchmark(corpus_dir: Path, out_dir: Path) -> dict:
    rows = [_run_child(corpus_dir, size, quality) for size in SIZES for quality in QUALITIES]
    result = {"source": SOURCE, "budget_mb": BUDGET_MB, "threads": torch.get_num_threads(), "rows": rows}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "memory.json").write_text(json.dumps(result, indent=1) + "\n")
    print(_table(result))
    return result


def _run_child(corpus_dir: Path, size: tuple[int, int], quality: int) -> dict:
    command = [sys.executable, "-m", "mvmic.bench.memory", str(corpus_dir), str(size[0]), str(size[1]), str(quality)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory run {size} quality {quality} failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _measure(corpus_dir: Path, rows: int, columns: int, quality: int) -> dict:
    from mvmic.model.codec import MvmicCodec
    from mvmic.model.quality import QUALITY_CODES

    entry = next(e for e in Manifest.load(corpus_dir / "manifest.json").entries if e.id == SOURCE)
    image = entry.read(corpus_dir)
    pixels = _resized(image.pixels[0, ..., 0], rows, columns).astype(image.pixels.dtype)[None, ..., None]
    codec = MvmicCodec.load()
    before = _peak_mb()
    started = time.perf_counter()
    stream = codec.compress_pixels(pixels, image.format, QUALITY_CODES[quality])
    encode_s = time.perf_counter() - started
    after_encode = _peak_mb()
    data = stream.to_bytes()
    started = time.perf_counter()
    decoded = codec.decompress(stream)
    decode_s = time.perf_counter() - started
    return {"rows": rows, "columns": columns, "quality": quality, "bpp": bits_per_pixel(data, pixels[0, ..., 0]),
            "peak_before_mb": before, "peak_encode_mb": after_encode, "peak_decode_mb": _peak_mb(),
            "encode_s": encode_s, "decode_s": decode_s,
            "max_abs_error": int(np.abs(decoded.astype(np.int64) - pixels.astype(np.int64)).max())}


def _resized(frame: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """Bilinear resize of a real radiograph: real anatomy and noise statistics at the target size."""
    values = torch.from_numpy(frame.astype(np.float64))[None, None]
    return torch.nn.functional.interpolate(values, size=(rows, columns), mode="bilinear")[0, 0].round().numpy()


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _table(result: dict) -> str:
    lines = [f"# Memory: {result['source']} resized, {result['threads']} threads, peak RSS of the whole process", "",
             "| size | quality | bpp | peak before MB | peak encode MB | peak decode MB | encode s | decode s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['rows']}x{r['columns']} | {r['quality']} | {r['bpp']:.3f} | {r['peak_before_mb']:.0f} | "
              f"{r['peak_encode_mb']:.0f} | {r['peak_decode_mb']:.0f} | {r['encode_s']:.1f} | {r['decode_s']:.1f} |"
              for r in result["rows"]]
    worst = max(r["peak_decode_mb"] for r in result["rows"])
    lines += ["", f"Largest peak {worst:.0f} MB of the {result['budget_mb']} MB budget"]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="one memory measurement (run by `mvmic bench memory`)")
    parser.add_argument("corpus", type=Path)
    parser.add_argument("rows", type=int)
    parser.add_argument("columns", type=int)
    parser.add_argument("quality", type=int)
    args = parser.parse_args()
    print(json.dumps(_measure(args.corpus, args.rows, args.columns, args.quality)))
