"""The direction of dependencies (issue 20): one import namespace, mvmic, in layers that import only downwards.

    mvmic.model, mvmic.paths                       the codec and the task heads: no DICOM, nothing above
    mvmic.pixels, transcode, derivative, corpus,   DICOM, the corpus, the PACS client and the gateway's
      pacs, archive, whole_file, child_process       storage, archive jobs
    mvmic.training, mvmic.service                  the training stages; the HTTP service
    mvmic.bench, mvmic.cli                         leaves: nothing imports them (the CLI alone imports bench)
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mvmic"
LAYERS = ({"model", "paths"},
          {"pixels", "transcode", "derivative", "corpus", "pacs", "archive", "whole_file", "child_process"},
          {"training", "service"},
          {"bench", "cli"})
CODEC_CORE = ("mvmic.model.codec", "mvmic.model.table_codec", "mvmic.model.bitstream", "mvmic.model.rate_control",
              "mvmic.model.colour", "mvmic.model.quality", "mvmic.model.lossless.stream", "mvmic.model.lossless.layer",
              "mvmic.model.errors", "mvmic.model.tasks.analysis")


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports by absolute name, those under ``if TYPE_CHECKING`` too."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def part_of(module: str) -> str | None:
    """The part of mvmic a module belongs to (its first name below mvmic), None outside mvmic."""
    names = module.split(".")
    return names[1] if names[0] == "mvmic" and len(names) > 1 and names[1] != "__init__" else None


def crossings() -> list[tuple[str, str, str]]:
    """(importing part, imported part, "file imports module") of every import from one part into another."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        name = path.relative_to(ROOT)
        source = part_of(".".join(name.with_suffix("").parts))
        for module in imported_modules(path):
            target = part_of(module)
            if None not in (source, target) and target != source:
                found.append((source, target, f"{name.as_posix()} imports {module}"))
    return found


def layer_of(part: str) -> int:
    return next(index for index, parts in enumerate(LAYERS) if part in parts)


def test_every_part_of_the_package_has_a_layer() -> None:
    parts = {path.stem if path.is_file() else path.name for path in PACKAGE.iterdir()
             if not path.name.startswith(("_", ".")) and (path.suffix == ".py" or (path / "__init__.py").exists())}
    assert parts == set().union(*LAYERS)


def test_imports_go_downwards_only() -> None:
    # within the codec and DICOM layers parts import each other (the cycle test holds them to a direction), and
    # the CLI runs the benchmarks
    upwards = [line for source, target, line in crossings()
               if layer_of(target) > layer_of(source)
               or (layer_of(target) == layer_of(source) > 1 and (source, target) != ("cli", "bench"))]
    assert upwards == []


def test_no_import_cycle_between_parts() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for source, target, _ in crossings():
        graph[source].add(target)
    finished: set[str] = set()

    def visit(part: str, path: tuple[str, ...]) -> None:
        assert part not in path, f"import cycle: {' -> '.join((*path, part))}"
        if part not in finished:
            for target in sorted(graph[part]):
                visit(target, (*path, part))
            finished.add(part)

    for part in sorted(graph):
        visit(part, ())


def test_nothing_imports_the_command_line_and_only_it_imports_the_benchmarks() -> None:
    offenders = [line for source, target, line in crossings()
                 if target == "cli" or (target == "bench" and source != "cli")]
    assert offenders == []
    for path in (ROOT / "fuzz").rglob("*.py"):
        assert not [module for module in imported_modules(path) if part_of(module) in ("cli", "bench")], path


def test_the_codec_core_imports_no_dicom_library_nor_anything_above_it() -> None:
    probe = (f"import sys\nimport {', '.join(CODEC_CORE)}\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydicom', 'highdicom')"
             " or (m.startswith('mvmic.') and m.split('.')[1] not in ('model', 'paths'))))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


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


def test_the_readme_map_names_every_module_and_only_modules_that_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Where things are"):readme.index("\n## ", readme.index("## Where things are") + 3)]
    named = set(re.findall(r"([\w/]+\.(?:py|c))\b", section))
    files = {path.relative_to(ROOT).as_posix() for path in PACKAGE.rglob("*") if path.suffix in (".py", ".c")
             and path.name != "__init__.py"}
    unnamed = sorted(f for f in files if f not in named and Path(f).name not in {Path(n).name for n in named})
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    missing = sorted(name for name in named if not any(f == name or f.endswith("/" + name) for f in tracked))
    assert (unnamed, missing) == ([], [])
