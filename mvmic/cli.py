"""The `mvmic` command line.

    mvmic data prepare [--out DIR]     build the real-image corpus (mvmic.corpus)
    mvmic bench rd [--split test]      classical codecs on the corpus (bench.rd)
    mvmic serve [--host H --port N]    the HTTP service (service)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mvmic.pixels import DicomInputError

DEFAULT_CORPUS = Path("data/corpus")
DEFAULT_CACHE = Path("data/cache")
DEFAULT_RESULTS = Path("results")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.run
    try:
        return command(args)
    except (DicomInputError, OSError, RuntimeError, ValueError) as exc:
        print(f"mvmic: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mvmic: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mvmic", description="MVMIC: learned, task-aware DICOM codec")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="corpus commands").add_subparsers(dest="data_command", required=True)
    prepare = data.add_parser("prepare", help="build the real-image corpus with its fixed split")
    prepare.add_argument("--out", type=Path, default=DEFAULT_CORPUS, help="corpus folder (default: %(default)s)")
    prepare.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="download cache (default: %(default)s)")
    prepare.add_argument("--force", action="store_true", help="rebuild even if the corpus is complete")
    prepare.set_defaults(run=_data_prepare)

    bench = commands.add_parser("bench", help="benchmarks").add_subparsers(dest="bench_command", required=True)
    rd = bench.add_parser("rd", help="rate-distortion of the registered codecs on the corpus")
    rd.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus folder (default: %(default)s)")
    rd.add_argument("--split", choices=("train", "val", "test"), default="test")
    rd.add_argument("--out", type=Path, default=DEFAULT_RESULTS / "rd", help="output folder (default: %(default)s)")
    rd.add_argument("--codec", action="append", dest="codecs", metavar="NAME",
                    help="only this codec (repeatable; default: all registered)")
    rd.add_argument("--jobs", type=int, default=None, help="worker processes (default: CPU count)")
    rd.set_defaults(run=_bench_rd)

    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default=None, help="bind address (default: MVMIC_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default: MVMIC_PORT or 8000)")
    serve.set_defaults(run=_serve)
    return parser


def _data_prepare(args: argparse.Namespace) -> int:
    from mvmic.corpus.prepare import prepare_corpus

    result = prepare_corpus(args.out, args.cache, force=args.force)
    manifest = result.manifest
    state = "built" if result.built else "already prepared"
    print(f"corpus {state}: {args.out} ({len(manifest.entries)} files, "
          f"{sum(e.frames for e in manifest.entries)} slices)")
    for key in ("modality", "split"):
        counts = ", ".join(f"{name} {count}" for name, count in manifest.slice_counts(key).items())
        print(f"  slices by {key}: {counts}")
    if result.built:
        print(f"  skipped {len(manifest.skipped)} source files (reasons in manifest.json)")
    return 0


def _bench_rd(args: argparse.Namespace) -> int:
    from bench.rd import run_rd_benchmark

    run_rd_benchmark(args.corpus, args.split, args.out, codec_names=args.codecs, jobs=args.jobs)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from service.server import serve
    from service.settings import Settings

    settings = Settings()
    serve(args.host or settings.host, args.port or settings.port, settings.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
