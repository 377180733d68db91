"""The direction of dependencies (issue 20): the codec core reads no DICOM, and the command line and the
benchmarks are leaves that no other package imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CODEC_CORE = ("mvmic.model.codec", "mvmic.model.table_codec", "mvmic.model.bitstream", "mvmic.model.rate_control", "mvmic.model.colour",
              "mvmic.model.quality", "mvmic.model.lossless.stream", "mvmic.model.lossless.layer", "mvmic.model.errors")


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


def test_the_codec_package_reads_no_training_data_and_training_reads_only_model_and_corpus() -> None:
    offenders = [f"{path.relative_to(ROOT).as_posix()} imports {module}"
                 for path in (ROOT / "mvmic" / "model").rglob("*.py") for module in imported_modules(path)
                 if module.startswith(("mvmic.corpus", "mvmic.training"))]
    allowed = ("mvmic.model", "mvmic.corpus", "mvmic.training", "mvmic.paths", "mvmic.metrics")
    offenders += [f"{path.relative_to(ROOT).as_posix()} imports {module}"
                  for path in (ROOT / "mvmic" / "training").rglob("*.py") for module in imported_modules(path)
                  if module.startswith("mvmic") and not module.startswith(allowed)]
    assert offenders == []
