"""The `mvmic` command line.

    mvmic data prepare [--out DIR]     build the real-image corpus (mvmic.corpus)
    mvmic bench rd [--split test]      classical codecs on the corpus (mvmic.bench.rd)
    mvmic export-onnx [HEADS.pt] [--int8]  the task heads as ONNX Runtime runs them (mvmic.model.tasks.runtime)
    mvmic serve [--host H --port N]    the HTTP service (service)
    mvmic pacs compress-study UID      compress a study in the PACS in place (mvmic.pacs)
    mvmic archive compress [SOURCE] --out DEST [--pacs URL]   a whole archive, on Ray (mvmic.archive)
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mvmic.pixels import DicomInputError

MODES = ("lossy", "near-lossless", "lossless")  # mvmic.transcode.MODES, without importing torch for --help
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
        print(f"mvmic: error: {_message(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mvmic: interrupted", file=sys.stderr)
        return 130


def _message(error: Exception) -> str:
    """One line per problem; for invalid MVMIC_* settings, where and what, never the value given (a token,
    a password)."""
    errors = getattr(error, "errors", None)  # pydantic's ValidationError, imported lazily by the commands
    if callable(errors):
        return "; ".join(f"{'.'.join(str(part) for part in item['loc']) or 'settings'}: {item['msg']}"
                         for item in errors(include_input=False, include_url=False))
    return str(error)


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
    rd.add_argument("--mvmicnet-weights", type=Path, default=None, metavar="WEIGHTS",
                    help="measure these MVMICNet weights instead of the served ones (e.g. weights/stage3/...)")
    rd.set_defaults(run=_bench_rd)
    speed = bench.add_parser("speed", help="compress/decompress time of a 512x512 CT, MVMICNet vs OpenJPEG")
    speed.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus folder (default: %(default)s)")
    speed.add_argument("--out", type=Path, default=DEFAULT_RESULTS / "speed", help="output folder")
    speed.add_argument("--quality", type=int, default=4, help="MVMICNet quality 1..8 (default: %(default)s)")
    speed.add_argument("--repeat", type=int, default=5, help="timed runs per codec (default: %(default)s)")
    speed.set_defaults(run=_bench_speed)
    memory = bench.add_parser("memory", help="peak memory of MVMICNet on 2000x2000 and 3000x2600 radiographs")
    memory.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus folder (default: %(default)s)")
    memory.add_argument("--out", type=Path, default=DEFAULT_RESULTS / "memory", help="output folder")
    memory.set_defaults(run=_bench_memory)
    service = bench.add_parser("service", help="throughput and p50/p99 latency of the service at concurrency 1, 8, 32")
    service.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus folder (default: %(default)s)")
    service.add_argument("--out", type=Path, default=DEFAULT_RESULTS / "service", help="output folder")
    service.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32],
                         help="client counts to measure (default: 1 8 32)")
    service.set_defaults(run=_bench_service)

    pacs_bench = bench.add_parser("pacs", help="storage saved in a real Orthanc through the gateway, and the "
                                               "round-trip error (run it in scripts/private-network)")
    pacs_bench.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus folder (default: %(default)s)")
    pacs_bench.add_argument("--out", type=Path, default=DEFAULT_RESULTS / "pacs", help="output folder")
    pacs_bench.add_argument("--split", default="test", help="corpus split (default: %(default)s)")
    pacs_bench.add_argument("--mode", action="append", choices=["lossless", "near-lossless 2"], default=None,
                            help="storage mode (repeatable; default: both)")
    pacs_bench.add_argument("--limit", type=int, default=None, help="only the first N images")
    pacs_bench.set_defaults(run=_bench_pacs)
    soak = bench.add_parser("soak", help="minutes of locust clients on compress, decompress, analyze, STOW-RS and "
                                         "WADO-RS: failures, latency, memory growth (run it in scripts/private-network)")
    soak.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus folder (default: %(default)s)")
    soak.add_argument("--out", type=Path, default=DEFAULT_RESULTS / "soak", help="output folder")
    soak.add_argument("--users", type=int, default=32, help="concurrent clients (default: %(default)s)")
    soak.add_argument("--duration", type=int, default=600, help="seconds of load (default: %(default)s)")
    soak.add_argument("--warmup", type=int, default=60,
                      help="seconds before memory growth is measured (default: %(default)s)")
    soak.set_defaults(run=_bench_soak)
    archive_bench = bench.add_parser("archive", help="archive-job throughput on a local Ray with 1 and 2 workers, "
                                                     "and its projection to a node and a cluster")
    archive_bench.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus folder (default: %(default)s)")
    archive_bench.add_argument("--out", type=Path, default=DEFAULT_RESULTS / "archive", help="output folder")
    archive_bench.add_argument("--split", choices=("train", "val", "test"), default="test")
    archive_bench.add_argument("--workers", type=_at_least(1, int), nargs="+", default=[1, 2],
                               help="worker counts to measure (default: 1 2)")
    archive_bench.add_argument("--mode", choices=MODES, default="lossless", help="(default: %(default)s)")
    archive_bench.add_argument("--max-error", type=int, default=None, metavar="TAU", help="near-lossless: the bound")
    archive_bench.add_argument("--node-cores", type=_at_least(1, int), default=32,
                               help="cores of the node the projection assumes (default: %(default)s)")
    archive_bench.add_argument("--nodes", type=_at_least(1, int), default=10,
                               help="nodes of the cluster the projection assumes (default: %(default)s)")
    archive_bench.set_defaults(run=_bench_archive)
    tasks = bench.add_parser("tasks", help="lesion Dice/IoU/AP50 per rate: heads on the bitstream vs pixel routes")
    tasks.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus folder (default: %(default)s)")
    tasks.add_argument("--out", type=Path, default=DEFAULT_RESULTS / "tasks", help="output folder")
    tasks.add_argument("--pixel-reference", type=Path, default=None,
                       help="pixel reference weights (default: the shipped ones)")
    tasks.add_argument("--every", type=int, default=1,
                       help="only every N-th synthetic frame, for a quicker run (default: all)")
    tasks.set_defaults(run=_bench_tasks)
    gpu = bench.add_parser("gpu", help="CUDA parity and GPU throughput of heads, codec and service (scripts/gpu-check "
                                       "runs it on a lent GPU machine; --dry-run: the CPU, small counts)")
    from mvmic.bench.gpu import add_run_arguments  # standard library only: --help stays quick

    add_run_arguments(gpu)
    gpu.set_defaults(run=_bench_gpu)

    compress = commands.add_parser("compress", help="DICOM -> .mvm bitstream")
    compress.add_argument("source", type=Path, metavar="IN.dcm")
    compress.add_argument("target", type=Path, metavar="OUT.mvm")
    rate = compress.add_mutually_exclusive_group()
    rate.add_argument("--quality", type=int, help="lossy: operating point 1 (smallest) to 8 (default 4)")
    rate.add_argument("--target-bpp", type=float, help="largest quality within this many bits per pixel")
    rate.add_argument("--target-psnr", type=float, help="smallest quality reaching this PSNR (dB, native peak)")
    compress.add_argument("--mode", choices=MODES, default="lossy",
                          help="lossy (the learned wavelet codec), near-lossless (every sample within --max-error) "
                               "or lossless (both: the exact layer, a pixel-domain coder) (default: %(default)s)")
    compress.add_argument("--max-error", type=int, default=None, metavar="TAU",
                          help="near-lossless: the largest absolute error in stored values, 1 to 16")
    compress.add_argument("--no-verify", dest="verify", action="store_false",
                          help="near-lossless/lossless: skip decoding the result to check the error bound")
    compress.add_argument("--weights", type=Path, default=None,
                          help="weights file (default: the shipped one; the residual model that decodes streams "
                               "of the first lossless design is read from <weights>-residual.pt beside it)")
    compress.add_argument("--analysis", type=Path, default=None, metavar="OUT.json",
                          help="also write the analysis of the bitstream, lesions and organs (as `mvmic analyze --json`)")
    compress.add_argument("--heads", type=Path, default=None, help="task heads weights (default: the shipped ones)")
    _heads_runtime_option(compress)
    compress.set_defaults(run=_compress)

    analyze = commands.add_parser("analyze", help="lesion and organ boxes and segmentation from a .mvm, without decoding pixels")
    analyze.add_argument("source", type=Path, metavar="IN.mvm")
    analyze.add_argument("--json", type=Path, default=None, metavar="OUT.json",
                         help="write the analysis here and print a summary per frame (default: print it all)")
    analyze.add_argument("--weights", type=Path, default=None, help="weights file (default: the shipped one)")
    analyze.add_argument("--heads", type=Path, default=None, help="task heads weights (default: the shipped ones)")
    _heads_runtime_option(analyze)
    analyze.set_defaults(run=_analyze)

    export_onnx = commands.add_parser("export-onnx", help="write the ONNX model of task heads weights, which "
                                      "analysis runs through ONNX Runtime")
    export_onnx.add_argument("heads", type=Path, nargs="?", default=None, metavar="HEADS.pt",
                             help="task heads weights (default: the shipped ones)")
    export_onnx.add_argument("--out", type=Path, default=None, metavar="HEADS.onnx",
                             help="where to write it (default: beside the weights, suffix .onnx, where analysis "
                                  "looks for it and the weights' manifest records it; --int8's model goes beside it)")
    export_onnx.add_argument("--int8", action="store_true",
                             help="also write the int8 model that CPUs run (suffix .int8.onnx), calibrated on the "
                                  "corpus's train split (mvmic.training.int8_calibration)")
    export_onnx.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS,
                             help="corpus folder for --int8's calibration (default: %(default)s)")
    export_onnx.set_defaults(run=_export_onnx)

    decompress = commands.add_parser("decompress", help=".mvm bitstream, or MVMIC instance -> DICOM")
    decompress.add_argument("source", type=Path, metavar="IN.mvm",
                            help="a .mvm file, or a DICOM instance holding one (as /v1/compress answers "
                                 "application/dicom and `mvmic archive compress` writes)")
    decompress.add_argument("target", type=Path, metavar="OUT.dcm")
    decompress.add_argument("--weights", type=Path, default=None, help="weights file (default: the shipped one)")
    decompress.set_defaults(run=_decompress)

    train = commands.add_parser("train", help="training").add_subparsers(dest="train_command", required=True)
    codec = _training_command(train, "codec", "stage 1: train the codec's entropy model on the train split",
                              "checkpoints/codec.pt", 2e-3, 1, _train_codec)
    codec.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default: %(default)s)")
    codec.add_argument("--export", type=Path, default=None, metavar="WEIGHTS",
                       help="after training, write the model as this weights file")

    contexts = train.add_parser("contexts", help="fit the lookup-table contexts and coding tables of the served lossy "
                                                 "codec (mvmicnet-w97-v3) on the train split")
    contexts.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus folder (default: %(default)s)")
    contexts.add_argument("--from", dest="source", type=Path, default=None, metavar="WEIGHTS",
                          help="version 2 weights whose band step scales and residual model are kept "
                               "(default: the shipped mvmicnet-w97-v2.pt)")
    contexts.add_argument("--export", type=Path, default=None, metavar="WEIGHTS",
                          help="the .npz weights file to write, with its manifest (default: the shipped one)")
    contexts.set_defaults(run=_train_contexts)

    residual = _training_command(train, "residual", "the residual layer's entropy model (near-lossless, lossless)",
                                 "checkpoints/residual.pt", 2e-3, 2, _train_residual)
    residual.add_argument("--export", type=Path, default=None, metavar="WEIGHTS",
                          help="after training, write the model as this weights file (the codec loads "
                               "<codec weights>-residual.pt beside its own)")

    for name, network, default_checkpoint, help_text in (
            ("heads", "latent", "checkpoints/heads.pt", "stage 2: train the task heads on the frozen codec's latent"),
            ("pixel-reference", "pixel", "checkpoints/pixel_reference.pt",
             "train the pixel-domain reference network on uncompressed images")):
        tasks = _training_command(train, name, help_text, default_checkpoint, 1e-3, 16, _train_tasks)
        tasks.add_argument("--device", default="cpu", help="torch device of the network (default: %(default)s)")
        tasks.add_argument("--export", type=Path, default=None, metavar="WEIGHTS",
                           help="after training, write the network as this weights file with a manifest")
        tasks.set_defaults(network=network)

    joint = _training_command(train, "joint", "stage 3: fine-tune codec and heads together, R + lambda D + beta L_task",
                              "checkpoints/joint.pt", 1e-4, 8, _train_joint)
    joint.add_argument("--device", default="cpu", help="torch device of codec and heads (default: %(default)s)")
    joint.add_argument("--export-codec", type=Path, default=None, metavar="WEIGHTS",
                       help="after training, write the codec here (tables refitted) with its manifest")
    joint.add_argument("--export-heads", type=Path, default=None, metavar="WEIGHTS",
                       help="after training, write the heads here with their manifest")

    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default=None, help="bind address (default: MVMIC_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default: MVMIC_PORT or 8000)")
    serve.set_defaults(run=_serve)

    pacs = commands.add_parser("pacs", help="work on studies in the PACS").add_subparsers(dest="pacs_command",
                                                                                         required=True)
    study = pacs.add_parser("compress-study", help="compress a study in the PACS in place of its originals")
    study.add_argument("study", metavar="STUDY_UID")
    study.add_argument("--pacs", default=None, help="the PACS's DICOMweb root (default: MVMIC_PACS_URL)")
    study.add_argument("--user", default=None, help="PACS user (default: MVMIC_PACS_USER)")
    study.add_argument("--password", default=None, help="PACS password (default: MVMIC_PACS_PASSWORD)")
    study.add_argument("--mode", choices=MODES, default="lossless",
                       help="lossless replaces each original; the others store derivatives beside them "
                            "(default: %(default)s)")
    study.add_argument("--max-error", type=int, default=None, metavar="TAU", help="near-lossless: the bound")
    originals = study.add_mutually_exclusive_group()
    originals.add_argument("--originals", type=Path, default=None, metavar="DIR",
                           help="where the originals are kept (default: originals/STUDY_UID)")
    originals.add_argument("--discard-originals", action="store_true", help="keep no copy of the originals")
    study.set_defaults(run=_pacs_compress_study)

    archive = commands.add_parser("archive", help="whole archives, on Ray").add_subparsers(dest="archive_command",
                                                                                          required=True)
    job = archive.add_parser("compress", help="compress a folder tree of DICOM files, or every study of a PACS, on "
                                              "Ray (local, or a cluster): resumable, with a ledger of every instance")
    job.add_argument("source", type=Path, nargs="?", default=None, metavar="SOURCE",
                     help="a folder tree of DICOM files (default: the studies of --pacs, compressed in place)")
    job.add_argument("--out", type=Path, required=True, metavar="DEST",
                     help="the folder that receives the compressed instances (in DEST/instances, at SOURCE's relative "
                          "paths; SEG and SR in DEST/analysis) and the ledger; with --pacs, the ledger, and the PACS's "
                          "originals in DEST/originals")
    job.add_argument("--pacs", default=None, metavar="URL",
                     help="a PACS's DICOMweb root: with SOURCE, the compressed instances are stored there (STOW-RS) "
                          "instead of DEST; without, its studies are compressed in place, as compress-study does")
    job.add_argument("--study", action="append", dest="studies", default=None, metavar="STUDY_UID",
                     help="without SOURCE: only this study (repeatable; default: every study of the PACS)")
    job.add_argument("--user", default=None, help="PACS user (default: MVMIC_PACS_USER)")
    job.add_argument("--password", default=None, help="PACS password (default: MVMIC_PACS_PASSWORD)")
    job.add_argument("--mode", choices=MODES, default="lossless", help="(default: %(default)s)")
    job.add_argument("--max-error", type=int, default=None, metavar="TAU", help="near-lossless: the bound")
    job.add_argument("--quality", type=int, default=None, help="lossy: quality 1..8 (default: rate control)")
    job.add_argument("--analysis", action="store_true", help="also write or store each image's analysis as DICOM "
                                                             "SEG and SR")
    job.add_argument("--discard-originals", action="store_true",
                     help="SOURCE: remove each file once its instance is written, read back and recorded; the PACS: "
                          "keep no copy of the originals it replaces (not with --mode lossy)")
    job.add_argument("--ledger", type=Path, default=None, metavar="FILE",
                     help="the job's SQLite ledger (default: DEST/archive-ledger.sqlite)")
    job.add_argument("--workers", type=_at_least(1, int), default=None,
                     help="worker processes, one CPU each (default: every CPU of the Ray cluster)")
    job.add_argument("--address", default=None, help="a Ray cluster to join: auto (this machine is one of its "
                                                     "nodes), HEAD:6379, or ray://HEAD:10001 (Ray Client) (default: "
                                                     "a local Ray started in this process)")
    job.add_argument("--gpus-per-worker", type=_at_least(0.0, float), default=None, metavar="N",
                     help="GPUs each worker asks Ray for (default: with --analysis, the cluster's GPUs shared "
                          "among the workers; else none)")
    _heads_runtime_option(job)
    job.set_defaults(run=_archive_compress)
    return parser


def _heads_runtime_option(parser: argparse.ArgumentParser) -> None:
    # checked by Analyzer.load (mvmic.model.tasks.analysis.RUNTIMES), which --help must not import
    parser.add_argument("--heads-runtime", default="auto", metavar="RUNTIME",
                        help="how the task heads run: auto (ONNX Runtime, int8 where exported), onnx (float), "
                             "onnx-int8 or torch (default: %(default)s; the service's MVMIC_HEADS_RUNTIME)")


def _training_command(train, name: str, help_text: str, checkpoint: str, learning_rate: float, batch: int,
                      run: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    """`mvmic train NAME` with the options every stage shares (corpus, checkpoint, time, resume, steps)."""
    parser = train.add_parser(name, help=help_text)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus folder (default: %(default)s)")
    parser.add_argument("--checkpoint", type=Path, default=Path(checkpoint),
                        help="checkpoint file (default: %(default)s)")
    parser.add_argument("--minutes", type=_at_least(0.0, float), default=30.0,
                        help="training time (default: %(default)s)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    parser.add_argument("--learning-rate", type=float, default=learning_rate,
                        help="Adam step size (default: %(default)s)")
    parser.add_argument("--batch", type=_at_least(1, int), default=batch, help="crops per step (default: %(default)s)")
    parser.set_defaults(run=run)
    return parser


def _training_config(kind: type, args: argparse.Namespace, **stage_options):
    """A stage's settings (``kind``: TrainConfig or a subclass) from the options _training_command gives every
    stage, and the command line that ran it."""
    return kind(corpus_dir=args.corpus, checkpoint=args.checkpoint, minutes=args.minutes, resume=args.resume,
                learning_rate=args.learning_rate, batch=args.batch, command=invoked_command(), **stage_options)


def _at_least(low: float, kind: type) -> Callable[[str], float]:
    """An argparse type: a number of ``kind`` no smaller than ``low`` (argparse reports the rest)."""
    def parse(text: str) -> float:
        value = kind(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{text}: at least {low} expected")
        return value
    return parse


def invoked_command() -> str:
    """This command line as typed, quoted so that it can be run again (recorded in manifests and ledgers), with
    secrets replaced by ***: the value of --password (or an abbreviation argparse takes for it) and the user
    information of any URL (http://user:password@host)."""
    words, hide_next = [], False
    for word in sys.argv[1:]:
        option, equals, _ = word.partition("=")
        if hide_next:
            word, hide_next = "***", False
        elif len(option) >= len("--pas") and "--password".startswith(option):
            word, hide_next = (f"{option}=***", False) if equals else (word, True)
        words.append(re.sub(r"(?<=://)[^/@\s]*@", "***@", word))
    return "mvmic " + shlex.join(words)


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
    from mvmic.bench.rd import run_rd_benchmark

    run_rd_benchmark(args.corpus, args.split, args.out, codec_names=args.codecs, jobs=args.jobs,
                     command=invoked_command(), mvmicnet_weights=args.mvmicnet_weights)
    return 0


def _load_codec(weights: Path | None):
    from mvmic.model.codec import MvmicCodec
    from mvmic.model.table_codec import DEFAULT_WEIGHTS

    return _on_all_cores(MvmicCodec.load(weights or DEFAULT_WEIGHTS))


def _on_all_cores(codec):
    """The codec, coding the frames of a multi-frame image on every core this process may use."""
    from mvmic.model.table_codec import cpu_cores

    table = getattr(codec, "table", codec)  # MvmicCodec's version 3 codec, or a TableCodec itself
    if hasattr(table, "threads"):
        table.threads = cpu_cores()
    return codec


def _compress(args: argparse.Namespace) -> int:
    from mvmic.transcode import dicom_to_mvm, error_bound

    max_error = error_bound(args.mode, args.max_error)
    # lossless and near-lossless streams are made without the codec's weights: load them only if needed
    codec = _load_codec(args.weights) if max_error is None or args.analysis else None
    result = dicom_to_mvm(args.source, codec, args.quality, args.target_bpp, args.target_psnr, max_error,
                          args.verify)
    args.target.write_bytes(result.data)
    coded = f"quality code {result.quality_code}" if max_error is None else f"maximum error {max_error}"
    print(f"{args.target}: {len(result.data)} bytes, {result.bits_per_pixel:.4f} bits per pixel, "
          f"ratio {result.ratio:.1f}:1, {coded}")
    if args.analysis:
        _write_analysis(result.data, codec, args.heads, args.heads_runtime, args.analysis)
    return 0


def _analyze(args: argparse.Namespace) -> int:
    _write_analysis(args.source.read_bytes(), _load_codec(args.weights), args.heads, args.heads_runtime, args.json)
    return 0


def _write_analysis(data: bytes, codec, heads: Path | None, runtime: str, target: Path | None) -> None:
    import json

    from mvmic.model.tasks.analysis import DEFAULT_HEADS, Analyzer
    from mvmic.transcode import analyze_mvm

    document = analyze_mvm(data, Analyzer.load(codec, heads or DEFAULT_HEADS, runtime=runtime))
    if target is None:
        print(json.dumps(document))
        return
    target.write_text(json.dumps(document, indent=1) + "\n")
    for frame in document["frames"]:
        boxes = ", ".join(f"{b['label']} {b['score']:.2f} at {b['box']}" for b in frame["boxes"]) or "no box"
        organs = ", ".join(f"{o['label']} {o['pixels']}" for o in frame["organs"]) or "none"
        print(f"frame {frame['frame']}: {boxes}; {frame['segmented_pixels']} lesion pixels; organ pixels: {organs}")


def _export_onnx(args: argparse.Namespace) -> int:
    import hashlib

    from mvmic.model.tasks.analysis import DEFAULT_HEADS
    from mvmic.model.tasks.runtime import export_heads_file, int8_path
    from mvmic.training.int8_calibration import export_heads_with_int8

    source = args.heads or DEFAULT_HEADS
    target = (export_heads_with_int8(source, args.corpus, args.out, invoked_command()) if args.int8
              else export_heads_file(source, args.out, invoked_command()))
    sha256 = hashlib.sha256(source.read_bytes()).hexdigest()
    for written in (target, int8_path(target)) if args.int8 else (target,):
        print(f"{written}: {written.stat().st_size} bytes, exported from {source} (sha256 {sha256})")
    return 0


def _decompress(args: argparse.Namespace) -> int:
    from mvmic.transcode import (
        bitstream_of_instance,
        decoder_for,
        instance_to_dicom,
        mvm_instance_dataset,
        mvm_to_dicom,
    )

    data = args.source.read_bytes()
    instance = mvm_instance_dataset(data)  # an MVMIC instance (as /v1/compress and archive jobs write), or None
    bitstream = data if instance is None else bitstream_of_instance(instance)
    codec = decoder_for(bitstream, args.weights)
    codec = _on_all_cores(codec) if codec is not None else None
    dataset = mvm_to_dicom(data, codec) if instance is None else instance_to_dicom(instance, codec)
    dataset.save_as(args.target, enforce_file_format=True)
    uid = dataset.get("SOPInstanceUID", "none (the source had none)")
    print(f"{args.target}: {dataset.Rows} x {dataset.Columns}, SOP Instance UID {uid}")
    return 0


def _train_codec(args: argparse.Namespace) -> int:
    from mvmic.training.loop import TrainConfig
    from mvmic.training.stage1_codec import export_weights, train

    command = invoked_command()
    state = train(_training_config(TrainConfig, args, device=args.device))
    print(f"step {state['step']}: validation bits per pixel {state['history'][-1]['val_bpp']}")
    if args.export:
        print(f"weights {args.export} sha256 {export_weights(args.checkpoint, args.export, command, args.corpus)}")
    return 0


def _train_contexts(args: argparse.Namespace) -> int:
    from mvmic.model.table_codec import DEFAULT_WEIGHTS
    from mvmic.training.table_fit import export

    out = args.export or DEFAULT_WEIGHTS
    if out.suffix != ".npz":
        raise SystemExit(f"mvmic: error: --export {out}: version 3 weights are a .npz file")
    print(f"weights {out} sha256 {export(out, args.corpus, invoked_command(), args.source)}")
    return 0


def _train_residual(args: argparse.Namespace) -> int:
    from mvmic.training.loop import TrainConfig
    from mvmic.training.residual import export_residual_weights, train_residual

    command = invoked_command()
    state = train_residual(_training_config(TrainConfig, args))
    print(f"step {state['step']}: validation bits per sample {state['history'][-1]['val_bits']}")
    if args.export:
        print(f"weights {args.export} sha256 "
              f"{export_residual_weights(args.checkpoint, args.export, command, args.corpus)}")
    return 0


def _train_tasks(args: argparse.Namespace) -> int:
    from mvmic.training.stage2_heads import TaskTrainConfig, export_task_weights, train_tasks

    command = invoked_command()
    state = train_tasks(_training_config(TaskTrainConfig, args, network=args.network, device=args.device))
    print(f"step {state['step']}: {state['history'][-1]}")
    if args.export:
        print(f"weights {args.export} sha256 {export_task_weights(args.checkpoint, args.export, command, args.corpus)}")
        if args.network == "latent":  # what analysis runs: ONNX Runtime reads the .onnx beside the weights
            from mvmic.training.int8_calibration import export_heads_with_int8

            print(f"ONNX model {export_heads_with_int8(args.export, args.corpus, command=invoked_command())}"
                  " and its int8 twin")
    return 0


def _train_joint(args: argparse.Namespace) -> int:
    from mvmic.training.stage2_heads import TaskTrainConfig
    from mvmic.training.stage3_joint import export_joint_weights, train_joint

    if (args.export_codec is None) != (args.export_heads is None):
        raise ValueError("give both --export-codec and --export-heads: stage 3 changes codec and heads together")
    command = invoked_command()
    state = train_joint(_training_config(TaskTrainConfig, args, network="joint", device=args.device))
    print(f"step {state['step']}: {state['history'][-1]}")
    if args.export_codec:
        sha256 = export_joint_weights(args.checkpoint, args.export_codec, args.export_heads, command, args.corpus)
        from mvmic.model.codec import MvmicCodec
        from mvmic.training.int8_calibration import export_heads_with_int8

        exported = export_heads_with_int8(args.export_heads, args.corpus, command=invoked_command(),
                                          codec=MvmicCodec.load(args.export_codec))
        print(f"codec {args.export_codec} sha256 {sha256}; heads {args.export_heads} (ONNX model {exported} and its "
              "int8 twin)")
    return 0


def _bench_speed(args: argparse.Namespace) -> int:
    from mvmic.bench.speed import run_speed_benchmark

    run_speed_benchmark(args.corpus, args.out, args.quality, args.repeat)
    return 0


def _bench_memory(args: argparse.Namespace) -> int:
    from mvmic.bench.memory import run_memory_benchmark

    run_memory_benchmark(args.corpus, args.out)
    return 0


def _bench_service(args: argparse.Namespace) -> int:
    from mvmic.bench.service import run_service_benchmark

    if min(args.concurrency) < 1:
        raise ValueError("--concurrency values must be at least 1")
    run_service_benchmark(args.corpus, args.out, tuple(args.concurrency))
    return 0


def _bench_pacs(args: argparse.Namespace) -> int:
    from mvmic.bench.pacs import MODES, run_pacs_benchmark

    run_pacs_benchmark(args.corpus, args.out, args.split, tuple(args.mode or MODES), args.limit)
    return 0


def _bench_soak(args: argparse.Namespace) -> int:
    from mvmic.bench.soak import run_soak_benchmark

    result = run_soak_benchmark(args.corpus, args.out, args.users, args.duration, args.warmup)
    return 0 if result["pass"] else 1


def _bench_archive(args: argparse.Namespace) -> int:
    from mvmic.bench.archive import run_archive_benchmark

    run_archive_benchmark(args.corpus, args.out, args.split, tuple(args.workers), args.mode, args.max_error,
                          args.node_cores, args.nodes)
    return 0


def _bench_tasks(args: argparse.Namespace) -> int:
    from mvmic.bench.tasks import DEFAULT_PIXEL_REFERENCE, run_tasks_benchmark

    if args.every < 1:
        raise ValueError("--every must be at least 1")
    run_tasks_benchmark(args.corpus, args.out, pixel_reference=args.pixel_reference or DEFAULT_PIXEL_REFERENCE,
                        every=args.every)
    return 0


def _bench_gpu(args: argparse.Namespace) -> int:
    from mvmic.bench.gpu import run_from_arguments

    return run_from_arguments(args)


def _pacs_compress_study(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mvmic.model.codec import MvmicCodec
    from mvmic.pacs.client import PacsClient
    from mvmic.pacs.compress_study import compress_study
    from mvmic.pacs.storage import StoragePolicy
    from mvmic.service.settings import Settings
    from mvmic.transcode import error_bound

    settings = Settings()
    root = args.pacs or settings.pacs_url
    if not root:
        raise ValueError("no PACS: give --pacs URL or set MVMIC_PACS_URL")
    policy = StoragePolicy(error_bound(args.mode, args.max_error))
    originals = None if args.discard_originals else args.originals or Path("originals") / args.study
    pacs = PacsClient(root, _pacs_auth(args, settings))
    try:
        summary = compress_study(pacs, args.study, MvmicCodec.load(), policy, originals,
                                 lambda items: tqdm(items, desc=f"study {args.study}", unit="instance"))
    finally:
        pacs.close()
    for line in summary.lines(in_place=policy.max_error == 0):
        print(line)
    if originals is not None and summary.compressed:
        print(f"originals kept in {originals}")
    return 1 if summary.failed else 0


def _pacs_auth(args: argparse.Namespace, settings) -> tuple[str, str] | None:
    """The PACS's HTTP basic credentials: --user and --password, else MVMIC_PACS_USER and MVMIC_PACS_PASSWORD."""
    user = args.user or settings.pacs_user
    password = args.password or (settings.pacs_password.get_secret_value() if settings.pacs_password else "")
    return (user, password) if user else None


def _archive_compress(args: argparse.Namespace) -> int:
    from pydicom.uid import UID
    from tqdm import tqdm

    from mvmic.archive.engine import LEDGER_NAME, ArchiveJob, run_archive
    from mvmic.archive.worker import ANALYSIS, INSTANCES, STAGING, PacsAddress, WorkerConfig
    from mvmic.pacs.storage import StoragePolicy
    from mvmic.service.settings import Settings
    from mvmic.transcode import error_bound

    bound = error_bound(args.mode, args.max_error)
    if args.quality is not None and bound is not None:
        raise ValueError("--quality applies to --mode lossy only")
    if args.discard_originals and bound is None:
        raise ValueError("--discard-originals keeps no original of a lossy copy: use --mode lossless or near-lossless")
    if args.source is None and args.pacs is None:
        raise ValueError("give SOURCE (a folder of DICOM files), --pacs URL (its studies, in place), or both")
    if args.studies and args.source is not None:
        raise ValueError("--study selects studies of the PACS: it applies without SOURCE only")
    for study in args.studies or ():
        if not UID(study).is_valid:
            raise ValueError(f"--study {study!r}: not a Study Instance UID (digits and dots, at most 64 characters)")
    ledger = args.ledger or args.out / LEDGER_NAME
    if args.source is not None:
        source, out = args.source.resolve(), args.out.resolve()
        if not args.source.is_dir():
            raise ValueError(f"{args.source}: not a folder")
        if source == out or source in out.parents or out in source.parents:
            raise ValueError(f"SOURCE {args.source} and DEST {args.out} must not hold one another")
        if source in ledger.resolve().parents:
            raise ValueError(f"the ledger {ledger} must not be inside SOURCE {args.source}")
        if any(out / tree in ledger.resolve().parents for tree in (INSTANCES, ANALYSIS, STAGING)):
            raise ValueError(f"the ledger {ledger} must not be among the instances DEST {args.out} receives")
    pacs = None
    if args.pacs is not None:
        settings = Settings()
        pacs = PacsAddress(args.pacs, _pacs_auth(args, settings), settings.pacs_timeout_s)
    in_place = args.source is None
    config = WorkerConfig(StoragePolicy(bound, args.quality, with_analysis=args.analysis), source=args.source,
                          out=None if pacs is not None else args.out, pacs=pacs,
                          originals=args.out / "originals" if in_place and not args.discard_originals else None,
                          heads_runtime=args.heads_runtime, studies=tuple(args.studies or ()))
    job = ArchiveJob(config, ledger, discard_originals=args.discard_originals)
    summary = run_archive(job, invoked_command(), args.workers, args.address, args.gpus_per_worker,
                          lambda records, total: tqdm(records, total=total, desc="archive", unit="instance"))
    for line in summary.lines():
        print(line)
    print(f"ledger {job.ledger}")
    return 1 if summary.failures else 0


def _serve(args: argparse.Namespace) -> int:
    from mvmic.service.resident_models import check_settings
    from mvmic.service.server import serve
    from mvmic.service.settings import Settings

    settings = Settings()
    check_settings(settings)
    serve(args.host or settings.host, args.port or settings.port, settings.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
