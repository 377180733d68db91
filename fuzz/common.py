"""What every fuzz target shares: the paths, the refusals an input may end in, the checks of a decoded
instance, and the start of libFuzzer (through atheris) with the seeds and the flags of this project.

A target is one script (fuzz/<target>.py) whose TestOneInput calls a real entry point on the fuzzer's bytes.
An input may end in a refusal (``refusing_bad_input``): one of the input errors the service maps to a 4xx
(mvmic/service/errors.py STATUS_BY_ERROR). Anything else is a crash to fix: an IndexError, a KeyError, a
struct.error, a bare ValueError (the service answers it 500), a MemoryError, an error logged by the gateway as
unexpected.

    python fuzz/<target>.py [libFuzzer flags] [corpus folders]

Without folders the target fuzzes results/fuzz/<target>/corpus (new inputs land there) and
results/fuzz/<target>/seeds (rebuilt at every start); MVMIC_FUZZ_DIR names another root than results/fuzz.
Defaults of the flags not given: -timeout=10, -rss_limit_mb=3072, -max_len (5/4 of the largest seed) and
-artifact_prefix=<root>/<target>/ (crash-*, timeout-*, oom-* inputs).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
for _path in (REPO_ROOT, REPO_ROOT / "tests"):  # the project, and the oddity builders of the tests
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import atheris

# Instrumented for coverage: the project and the DICOM parser, less what the targets do not run (tables of
# data take most of the instrumentation time: half a minute for pydicom.sr alone). numba compiles the
# kernels of the numba modules from their bytecode, which must stay as written.
INSTRUMENTED = ("mvmic", "pydicom")
NUMBA_MODULES = ("mvmic.model.lossless.plane_coder", "mvmic.model.lossless.range_coder",
                 "mvmic.model.lossless.enc_least_squares")
UNINSTRUMENTED = (*NUMBA_MODULES, "mvmic.model.tasks", "mvmic.training",
                  "mvmic.cli", "mvmic.corpus", "pydicom.sr", "pydicom._dicom_dict", "pydicom._private_dict",
                  "pydicom._uid_dict", "pydicom.pixels.encoders", "pydicom.examples", "pydicom.data")
DEFAULT_FLAGS = {"timeout": "10", "rss_limit_mb": "3072"}


def results_root() -> Path:
    return Path(os.environ.get("MVMIC_FUZZ_DIR") or REPO_ROOT / "results" / "fuzz")


def quiet() -> None:
    """pydicom warns about every malformed input it still reads: millions of lines in a long run."""
    warnings.filterwarnings("ignore")
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)


def instrumented() -> atheris.import_hook.HookManager:
    """Context manager under which the targets import the project (coverage-guided)."""
    excluded = [module for name in UNINSTRUMENTED for module in _modules(name)]
    return atheris.instrument_imports(include=list(INSTRUMENTED), exclude=excluded)


def _modules(name: str) -> list[str]:
    """``name`` and, for a package, every module in it (atheris excludes modules by their full name), found on
    disk without importing anything."""
    top, *inner = name.split(".")
    base = Path(importlib.util.find_spec(top).submodule_search_locations[0]).joinpath(*inner)
    if not base.is_dir():
        return [name]
    modules = [name]
    for path in base.rglob("*.py"):
        parts = path.relative_to(base).with_suffix("").parts
        modules.append(".".join((name, *(parts[:-1] if parts[-1] == "__init__" else parts))))
    return modules


def input_errors() -> tuple[type[Exception], ...]:
    """The refusals of a bad input: the error classes mvmic/service/errors.py maps to 400, 409, 415 and 422."""
    from mvmic.service.errors import STATUS_BY_ERROR

    return tuple(kind for kind, _ in STATUS_BY_ERROR)


def is_refusal(error: BaseException, also: tuple[type[Exception], ...] = ()) -> bool:
    """Whether ``error`` is a deliberate refusal: an input error or one of ``also``, whose message quotes no
    traceback. Any other exception, a bare ValueError included, is what the service answers 500: a crash."""
    if "Traceback (most recent call last)" in str(error):  # a refusal quotes one line, never a traceback
        return False
    return isinstance(error, (*input_errors(), *also))


@contextmanager
def refusing_bad_input(also: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """Let a deliberate refusal of the input pass (is_refusal); anything else propagates: a crash."""
    try:
        yield
    except Exception as error:
        if not is_refusal(error, also):
            raise


class LoggedErrors(logging.Handler):
    """Errors that MVMIC logs instead of raising (the gateway stores an instance as received after an
    unexpected error, logged with its traceback): each one is a crash to fix."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []
        logging.getLogger("mvmic").addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def check(self) -> None:
        records, self.records = self.records, []
        if records:  # atheris prints the last exception alone: the logged one's traceback goes first
            print(logging.Formatter().format(records[0]), file=sys.stderr, flush=True)
            cause = records[0].exc_info[1] if records[0].exc_info else None
            raise RuntimeError(f"logged as an error: {records[0].getMessage()}"
                               + (f" ({type(cause).__name__}: {cause})" if cause else ""))


def check_decoded(dataset, stream) -> bytes:
    """Serialise a decoded instance as the service answers it (Part 10) and check that it describes the
    pixels it holds, as ``stream`` (a mvmic.model.bitstream.Bitstream) coded them: AssertionError if not."""
    import pydicom

    from mvmic.pixels import pixel_data_bytes

    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    written = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    frames = int(written.get("NumberOfFrames") or 1)
    declared = (written.Rows, written.Columns, frames, written.SamplesPerPixel, written.BitsStored,
                bool(written.PixelRepresentation))
    coded = (stream.rows, stream.columns, stream.frames, stream.samples_per_pixel, stream.bits_stored, stream.signed)
    expect(declared == coded, f"decoded header declares {declared}, the stream coded {coded}")
    expect(written.BitsAllocated in (8, 16) and written.BitsStored <= written.BitsAllocated,
           f"BitsAllocated {written.BitsAllocated} cannot hold BitsStored {written.BitsStored}")
    photometric = str(written.PhotometricInterpretation)
    expect(photometric == stream.photometric or (photometric, stream.photometric) == ("YBR_FULL_422", "YBR_FULL"),
           f"decoded header declares {photometric}, the stream coded {stream.photometric}")
    expected = pixel_data_bytes(written, frames)
    expect(len(written.PixelData) == expected + expected % 2,
           f"PixelData holds {len(written.PixelData)} bytes, the header declares {expected}")
    return buffer.getvalue()


def expect(condition: bool, message: str) -> None:
    """A check of the fuzz targets' own (AssertionError: a crash), kept under python -O too."""
    if not condition:
        raise AssertionError(message)


def run(target: str, test_one_input: Callable[[bytes], None], seeds: Callable[[], list[bytes]],
        mutator: Callable[[bytes, int, int], bytes] | None = None) -> None:
    """Write the seeds, complete the libFuzzer flags (module docstring) and fuzz ``test_one_input``; with
    files as arguments, run just those inputs (libFuzzer's way to reproduce a finding)."""
    from seeds import write

    root = results_root() / target
    argv = list(sys.argv)
    given = {argument.split("=")[0].lstrip("-") for argument in argv[1:] if argument.startswith("-")}
    paths = [Path(argument) for argument in argv[1:] if not argument.startswith("-")]
    flags = {**DEFAULT_FLAGS, "artifact_prefix": f"{root}/"}
    if not any(path.is_file() for path in paths):
        seed_paths = write(root / "seeds", seeds())
        if not paths:  # new inputs go to the first folder
            (root / "corpus").mkdir(parents=True, exist_ok=True)
            argv.append(str(root / "corpus"))
        argv.append(str(root / "seeds"))
        flags["max_len"] = str(max(path.stat().st_size for path in seed_paths) * 5 // 4)
        print(f"{target}: {len(seed_paths)} seeds in {root / 'seeds'}", flush=True)
    argv[1:1] = [f"-{name}={value}" for name, value in flags.items() if name not in given]
    print(f"{target}: {' '.join(argv[1:])}", flush=True)
    prefix = next(argument.split("=", 1)[1] for argument in argv if argument.startswith("-artifact_prefix="))

    def kept(data: bytes) -> None:
        """``test_one_input``, the input of a crash written at once: libFuzzer writes it only once the process
        is on its way out, and a process that dies there (by SIGALRM, seen under load) would lose it."""
        try:
            test_one_input(data)
        except BaseException:
            Path(f"{prefix}crash-{hashlib.sha1(data).hexdigest()}").write_bytes(data)
            raise

    atheris.Setup(argv, kept, custom_mutator=mutator)
    atheris.Fuzz()
