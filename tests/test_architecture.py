"""The direction of dependencies (issue 20): the codec core reads no DICOM, and the command line and the
benchmarks are leaves that no other package imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CODEC_CORE = ("mvmic.model.codec", "mvmic.model.table_codec", "mvmic.model.bitstream", "mvmic.model.rate_control", "mvmic.model.colour",
              "mvmic.model.quality", "mvmic.model.lossless.stream", "mvmic.model.lossless.layer", "mvmic.model.errors",
              "mvmic.model.cnn_base", "mvmic.model.residual_layer", "mvmic.model.enc_residual",
              "mvmic.model.enc_table_codec", "mvmic.model.enc_context_model")


def test_the_codec_core_imports_no_dicom_library_nor_anything_above_it() -> None:
    probe = (f"import sys\nimport {', '.join(CODEC_CORE)}\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydicom', 'highdicom', 'service', 'bench')"
             " or m.startswith(('mvmic.pixels', 'mvmic.pacs', 'mvmic.transcode', 'mvmic.cli'))))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def test_nothing_imports_the_command_line_and_only_it_imports_the_benchmarks() -> None:
    offenders = []
    for package in ("model", "mvmic", "service", "bench", "fuzz"):
        for path in (ROOT / package).rglob("*.py"):
            name = path.relative_to(ROOT).as_posix()
            for module in imported_modules(path):
                top = module.split(".")[0]
                if module == "mvmic.cli" or (top == "bench" and package != "bench" and name != "mvmic/cli.py"):
                    offenders.append(f"{name} imports {module}")
    assert offenders == []


DECODE_EVERY_STREAM = """
import sys
from pathlib import Path
from mvmic.model.bitstream import Bitstream
from mvmic.model.codec import MvmicCodec
from mvmic.model.table_codec import TableCodec
from mvmic.model.lossless import stream as exact_stream
encoder_only = lambda: sorted(m for m in sys.modules if m.rsplit(".", 1)[-1].startswith("enc_"))
codec = MvmicCodec.load()
for path in sorted(Path(sys.argv[1]).glob("*.mvm")):
    stream = Bitstream.from_bytes(path.read_bytes())
    codec.decompress(stream)
    codec.decode_coarse(stream)
    if exact_stream.is_exact(stream):
        exact_stream.decompress(stream)
    elif stream.model_id == TableCodec.model_id and len(stream.layers) == 1:
        codec.table.decompress(stream)
print(encoder_only())
image = Bitstream.from_bytes(next(Path(sys.argv[1]).glob("*.mvm")).read_bytes())
codec.compress_pixels(codec.decompress(image), image.pixel_format, 36, max_error=0)
exact_stream.compress(codec.decompress(image), image.pixel_format, 0)
print(encoder_only())
"""


def test_decoding_loads_no_encoder_only_module(corpus_dir, tmp_path) -> None:
    # As in libjxl, what only an encoder runs (the searches whose results a stream carries) lives in enc_* modules,
    # so the decoder's path is the trusted code read at a glance: decoding a stream of every kind (version 3 and 2
    # base layers, residual layers, exact layers) in a fresh interpreter loads none of them. Encoding then does.
    from mvmic.model.cnn_base import CNN_WEIGHTS
    from mvmic.model.codec import MvmicCodec
    from mvmic.model.lossless import stream as exact_stream
    from mvmic.pixels import read_dicom

    image = read_dicom(corpus_dir / "images" / "pydicom-CT_small.dcm")
    pixels, fmt = image.pixels[:, 40:88, 40:88].copy(), image.format  # 48 x 48 of a real CT: seconds for every coder
    served, cnn = MvmicCodec.load(), MvmicCodec.load(CNN_WEIGHTS)
    streams = {"v3": served.compress_pixels(pixels, fmt, 36),
               "v3-residual": served.compress_pixels(pixels, fmt, 36, max_error=1),
               "v2": cnn.compress_pixels(pixels, fmt, 36), "v2-residual": cnn.compress_pixels(pixels, fmt, 36, max_error=0),
               "exact": exact_stream.compress(pixels, fmt, 0)}
    for name, stream in streams.items():
        (tmp_path / f"{name}.mvm").write_bytes(stream.to_bytes())
    probe = subprocess.run([sys.executable, "-c", DECODE_EVERY_STREAM, str(tmp_path)], cwd=ROOT, capture_output=True,
                           text=True, check=True)
    decoding, encoding = probe.stdout.splitlines()
    assert decoding == "[]"
    assert all(f"mvmic.model.{name}'" in encoding for name in ("enc_residual", "enc_table_codec",
                                                                "lossless.enc_least_squares")), encoding
