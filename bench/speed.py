"""`mvmic bench speed`: compress and decompress time of a 512x512 CT, MVMICNet beside OpenJPEG.

Both run in the same process on the same slice, OpenJPEG at the rate MVMICNet reached,
so the ratio of their times is meaningful even where absolute timings are noisy.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.codecs import CODECS, OperatingPoint, registered_codecs
from mvmic.corpus.manifest import Manifest
from mvmic.metrics import bits_per_pixel

CT_SLICE = "pyradiomics-lung1-030"  # 512 x 512, 12 bits stored, test split


def run_speed_benchmark(corpus_dir: Path, out_dir: Path, quality: int = 4, repeat: int = 5) -> dict:
    registered_codecs()
    entry = next(e for e in Manifest.load(corpus_dir / "manifest.json").entries if e.id == CT_SLICE)
    image = entry.read(corpus_dir)
    frame, fmt = image.frame(0), image.format
    mvmic = CODECS["MVMICNet"]
    point = mvmic.points[quality - 1]
    encoded = mvmic.encode(frame, fmt, point)
    bpp = bits_per_pixel(encoded, frame)
    jpeg2000 = CODECS["JPEG 2000"]
    matched = OperatingPoint(f"9/7 {bpp:.3f} bpp", param=bpp)
    rows = [
        _time_codec("MVMICNet", point.label, lambda: mvmic.encode(frame, fmt, point),
                    lambda data: mvmic.decode(data, fmt, point), frame, repeat),
        _time_codec("JPEG 2000 (OpenJPEG)", matched.label, lambda: jpeg2000.encode(frame, fmt, matched),
                    lambda data: jpeg2000.decode(data, fmt, matched), frame, repeat),
    ]
    result = {"image": CT_SLICE, "shape": list(frame.shape), "threads": torch.get_num_threads(), "repeat": repeat,
              "rows": rows,
              "encode_ratio": rows[0]["encode_ms"] / rows[1]["encode_ms"],
              "decode_ratio": rows[0]["decode_ms"] / rows[1]["decode_ms"]}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "speed.json").write_text(json.dumps(result, indent=1) + "\n")
    print(_table(result))
    return result


def _time_codec(name: str, point: str, encode: Callable[[], bytes], decode: Callable[[bytes], object],
                frame, repeat: int) -> dict:
    data = encode()  # warm-up: weights, tables and caches
    decode(data)
    encode_times, decode_times = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        data = encode()
        encode_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        decode(data)
        decode_times.append(time.perf_counter() - started)
    return {"codec": name, "point": point, "bpp": bits_per_pixel(data, frame),
            "encode_ms": 1000 * statistics.median(encode_times), "decode_ms": 1000 * statistics.median(decode_times)}


def _table(result: dict) -> str:
    lines = [(f"# Speed: {result['image']} {result['shape'][0]}x{result['shape'][1]}, "
             f"{result['threads']} threads, median of {result['repeat']}"), "",
             "| codec | point | bpp | encode ms | decode ms |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['codec']} | {r['point']} | {r['bpp']:.3f} | {r['encode_ms']:.1f} | {r['decode_ms']:.1f} |"
              for r in result["rows"]]
    lines += ["", f"MVMICNet / OpenJPEG: encode {result['encode_ratio']:.1f}x, decode {result['decode_ratio']:.1f}x"]
    return "\n".join(lines)
