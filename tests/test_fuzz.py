"""A short run of every fuzz target (fuzz/, `make fuzz` runs them long): libFuzzer really runs the inputs asked
of it, through the real entry points, and finds no crash, hang or excess of memory; and the targets' judge of
an exception tells a refusal of bad input from a crash."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

FUZZ_DIR = Path(__file__).resolve().parent.parent / "fuzz"
sys.path.insert(0, str(FUZZ_DIR))

from campaign import TARGETS, campaign
from common import is_refusal

from mvmic.model.bitstream import Bitstream, CorruptedError
from mvmic.pixels import DicomInputError, read_dataset
from mvmic.transcode import error_bound

RUNS = 300  # per target: seeds first, then mutations; about 40 s for the three on 2 cores


def test_every_target_runs_the_inputs_asked_and_finds_nothing(tmp_path) -> None:
    summary = campaign(TARGETS, RUNS, tmp_path, jobs=len(TARGETS))
    assert [result["target"] for result in summary["targets"]] == list(TARGETS)
    for result in summary["targets"]:
        log = Path(result["log"]).read_text(errors="replace")
        assert result["exit_status"] == 0 and not result["findings"], f"{result['error']}\n{log[-3000:]}"
        assert result["done_runs"] == RUNS and result["cov"] > 0, log[-3000:]
    assert (tmp_path / "fuzz.json").is_file() and "| dicom_input | 300 |" in (tmp_path / "fuzz.md").read_text()


def _raised(function, *args) -> Exception:
    try:
        function(*args)
    except Exception as error:  # noqa: BLE001 - the point is which one
        return error
    raise AssertionError("nothing raised")


def test_refusals_are_told_from_crashes() -> None:
    assert is_refusal(_raised(Bitstream.from_bytes, b"MVM\x01" + bytes(30)))
    assert isinstance(_raised(Bitstream.from_bytes, b"MVM\x01" + bytes(30)), CorruptedError)
    assert is_refusal(_raised(read_dataset, b"not DICOM"))  # DicomInputError: the service's 400
    assert not is_refusal(_raised(error_bound, "lossy", 3))  # a bare ValueError, even MVMIC's own: the service's 500
    assert not is_refusal(_raised(np.zeros(3).reshape, 2))  # numpy's ValueError: a crash
    assert not is_refusal(_raised([].pop))
    assert not is_refusal(DicomInputError("Traceback (most recent call last):\n  File ..."))


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_is_a_script_with_its_seeds(target: str) -> None:
    text = (FUZZ_DIR / f"{target}.py").read_text()
    assert f'common.run("{target}"' in text and "def TestOneInput(data: bytes)" in text
