"""`mvmic bench speed`: compress and decompress time of a 512x512 CT, MVMICNet beside the classical codecs.

    lossy     MVMICNet at --quality beside OpenJPEG at the rate MVMICNet reached
    frames    the lossy codec on an 8-frame stack of the slice, frames on one thread and on two (the
              C kernels release the GIL): the gain of the second core; one frame is one sequential
              rANS stream, so a single frame gains nothing
    lossless  MVMICNet's exact layer (one thread; and two stripes on two threads) beside JPEG XL
              effort 7 and JPEG-LS, each on one thread

All run in the same process on the same slice, so the ratios of their times are meaningful even
where absolute timings are noisy.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mvmic.bench.codecs import CODECS, OperatingPoint, registered_codecs
from mvmic.bench.codecs.mvmicnet import measured_codec
from mvmic.corpus.manifest import Manifest
from mvmic.model.bitstream import Bitstream
from mvmic.model.lossless import stream as exact_stream
from mvmic.model.rate_distortion import bits_per_pixel

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
    frames = _frame_thread_rows(frame, fmt, point.param, repeat)
    lossless = _lossless_rows(frame, fmt, repeat)
    # Every row but the second frame row runs on one thread: MVMICNet's C kernels, OpenJPEG, JPEG XL
    # (numthreads=1), CharLS and the exact layer's first row are single-threaded.
    result = {"image": CT_SLICE, "shape": list(frame.shape), "threads": 1, "repeat": repeat,
              "rows": rows,
              "encode_ratio": rows[0]["encode_ms"] / rows[1]["encode_ms"],
              "decode_ratio": rows[0]["decode_ms"] / rows[1]["decode_ms"],
              "frame_rows": frames,
              "two_thread_gain": {"encode": frames[0]["encode_ms"] / frames[1]["encode_ms"],
                                  "decode": frames[0]["decode_ms"] / frames[1]["decode_ms"]},
              "lossless_rows": lossless,
              "lossless_encode_ratio_vs_jpeg_xl_e7": lossless[0]["encode_ms"] / lossless[2]["encode_ms"],
              "lossless_decode_ratio_vs_jpeg_xl_e7": lossless[0]["decode_ms"] / lossless[2]["decode_ms"]}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "speed.json").write_text(json.dumps(result, indent=1) + "\n")
    print(_table(result))
    return result


def _frame_thread_rows(frame, fmt, code: int, repeat: int, frames: int = 8) -> list[dict]:
    """The lossy codec on ``frames`` copies of the slice, frames on one thread, then on two."""
    table = measured_codec().table
    stack = np.ascontiguousarray(np.broadcast_to(frame.reshape(1, *frame.shape[:2], -1), (frames, *frame.shape[:2],
                                                                                             fmt.samples_per_pixel)))

    def threaded(threads: int) -> tuple[Callable[[], bytes], Callable[[bytes], object]]:
        return (lambda: table.compress_pixels(stack, fmt, code, threads=threads).to_bytes(),
                lambda data: table.decompress(Bitstream.from_bytes(data), threads=threads))

    pixels = stack.reshape(frames * stack.shape[1], stack.shape[2])  # bits per pixel over all frames
    return [_time_codec("MVMICNet", f"{frames} frames, {threads} thread{'s' if threads > 1 else ''}", *threaded(threads),
                        pixels, repeat) for threads in (1, 2)]


def _lossless_rows(frame, fmt, repeat: int) -> list[dict]:
    """The exact layer on one and on two threads, JPEG XL e7 and JPEG-LS: lossless, one frame."""
    pixels = frame[None, ..., None] if frame.ndim == 2 else frame[None]

    def exact(threads: int) -> tuple[Callable[[], bytes], Callable[[bytes], object]]:
        stripes = 1 if threads == 1 else threads
        return (lambda: exact_stream.compress(pixels, fmt, 0, verify=False, stripes=stripes, threads=threads).to_bytes(),
                lambda data: exact_stream.decompress(Bitstream.from_bytes(data), threads=threads))

    rows = [_time_codec("MVMICNet lossless", "1 thread", *exact(1), frame, repeat),
            _time_codec("MVMICNet lossless", "2 stripes, 2 threads", *exact(2), frame, repeat)]
    for name, label in (("JPEG XL", "lossless e7"), ("JPEG-LS", "lossless")):
        codec_ = CODECS[name]
        point = next(p for p in codec_.points if p.label == label)
        rows.append(_time_codec(name, f"{label}, 1 thread", lambda c=codec_, p=point: c.encode(frame, fmt, p),
                                lambda data, c=codec_, p=point: c.decode(data, fmt, p), frame, repeat))
    return rows


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
             f"one thread per codec unless a row says otherwise, median of {result['repeat']}"), "",
             "| codec | point | bpp | encode ms | decode ms |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['codec']} | {r['point']} | {r['bpp']:.3f} | {r['encode_ms']:.1f} | {r['decode_ms']:.1f} |"
              for r in result["rows"]]
    lines += ["", f"MVMICNet / OpenJPEG: encode {result['encode_ratio']:.1f}x, decode {result['decode_ratio']:.1f}x"]
    lines += ["", "Lossy, frames on threads:", "", "| codec | frames, threads | bpp | encode ms | decode ms |",
              "|---|---|---:|---:|---:|"]
    lines += [f"| {r['codec']} | {r['point']} | {r['bpp']:.3f} | {r['encode_ms']:.1f} | {r['decode_ms']:.1f} |"
              for r in result["frame_rows"]]
    gain = result["two_thread_gain"]
    lines += ["", f"Second thread: encode {gain['encode']:.2f}x, decode {gain['decode']:.2f}x faster"]
    lines += ["", "Lossless:", "", "| codec | threads | bpp | encode ms | decode ms |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['codec']} | {r['point']} | {r['bpp']:.3f} | {r['encode_ms']:.1f} | {r['decode_ms']:.1f} |"
              for r in result["lossless_rows"]]
    encode, decode = result["lossless_encode_ratio_vs_jpeg_xl_e7"], result["lossless_decode_ratio_vs_jpeg_xl_e7"]
    lines += ["", f"MVMICNet lossless (1 thread) / JPEG XL e7: encode {encode:.2f}x, decode {decode:.2f}x"]
    return "\n".join(lines)
