"""`mvmic archive compress` on a local Ray, as a user runs it: real corpus files, a real Orthanc, and a
`kill -9` of the whole job mid-run followed by a rerun that must finish exactly the rest."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file

from mvmic.archive.ledger import Ledger, exclusive
from mvmic.cli import main
from mvmic.pacs.orthanc import OrthancServer
from mvmic.pixels import read_dataset
from mvmic.transcode import MVM_TRANSFER_SYNTAX, instance_to_dicom

REPO_ROOT = Path(__file__).resolve().parent.parent
LEDGER = "archive-ledger.sqlite"


def start(*args: str) -> subprocess.Popen:
    """`mvmic archive compress ARGS` in its own process group (Ray's processes with it), output to pipes."""
    return subprocess.Popen([sys.executable, "-m", "mvmic.cli", "archive", "compress", *args], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=600)
    return process.returncode, out, err


def rows(ledger: Path) -> dict[str, tuple]:
    """key -> (state, run, error) of every instance the ledger holds (read while the job writes it)."""
    if not ledger.is_file():
        return {}
    try:
        with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as db:
            return {key: rest for key, *rest in db.execute("SELECT key, state, run, error FROM instances")}
    except sqlite3.OperationalError:  # created, its tables not yet
        return {}


def kill_after(process: subprocess.Popen, ledger: Path, recorded: int) -> dict[str, tuple]:
    """``kill -9`` of the job and every process it started, once the ledger holds ``recorded`` instances; what
    the ledger holds then."""
    deadline = time.monotonic() + 300
    while len(rows(ledger)) < recorded:
        assert process.poll() is None, f"the job ended before the kill: {finish(process)}"
        assert time.monotonic() < deadline, "the job recorded nothing for 300 s"
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    return rows(ledger)


def assert_decodes_to(instance: bytes, original: pydicom.Dataset) -> None:
    """``instance``, as written or stored, is ``original`` exactly: the same header and the same pixels."""
    stored = read_dataset(instance)
    if stored.file_meta.TransferSyntaxUID != MVM_TRANSFER_SYNTAX:  # kept as received
        assert stored == original
        return
    decoded = instance_to_dicom(stored, None)  # a lossless stream needs no weights
    assert decoded.SOPInstanceUID == original.SOPInstanceUID
    assert np.array_equal(decoded.pixel_array, original.pixel_array)
    assert [element.tag for element in decoded if element.tag != 0x7FE00010] == \
        [element.tag for element in original if element.tag != 0x7FE00010]


def test_a_folder_killed_mid_run_is_finished_by_the_rerun_with_nothing_lost_or_done_twice(
        corpus_dir: Path, tmp_path: Path) -> None:
    source, dest = tmp_path / "source", tmp_path / "dest"
    originals = {f"mr/{name}": corpus_dir / "images" / f"pyradiomics-brain2-{index:03d}.dcm"
                 for index, name in enumerate(f"IM{index:04d}" for index in range(14))}
    originals["ct/slice.dcm"] = corpus_dir / "images" / "totalsegmentator-ct-000.dcm"
    originals["us/rgb.dcm"] = corpus_dir / "images" / "pydicom-examples_rgb_color.dcm"
    originals["plan/rtplan.dcm"] = Path(get_testdata_file("rtplan.dcm"))  # no pixels: kept as it is
    originals["ct/slice.dcm.partial"] = corpus_dir / "images" / "totalsegmentator-ct-001.dcm"  # a name DEST uses too
    for key, path in originals.items():
        (source / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, source / key)
    (source / "notes.txt").write_text("not DICOM")
    arguments = (str(source), "--out", str(dest), "--workers", "2", "--discard-originals")

    before = kill_after(start(*arguments), dest / LEDGER, 4)
    code, out, err = finish(start(*arguments))

    assert code == 1, err  # one failure, listed; the job still finished
    assert "failed notes.txt: not a DICOM file" in out and "Traceback" not in err
    after = rows(dest / LEDGER)
    assert after.keys() == {*originals, "notes.txt"}
    done_before = {key: state for key, (state, _, _) in before.items() if state != "failed"}  # failures: tried again
    assert {key: state for key, (state, run, _) in after.items() if run == 1} == done_before, \
        "the rerun did again what the killed run had done"
    assert after["plan/rtplan.dcm"][0] == "unchanged" and after["notes.txt"][0] == "failed"
    assert sum(state == "compressed" for state, _, _ in after.values()) == len(originals) - 1
    written = {path.relative_to(dest).as_posix() for path in dest.rglob("*") if path.is_file()}
    job_files = {LEDGER, f"{LEDGER}-wal", f"{LEDGER}-shm", f"{LEDGER}.lock", "archive.lock", "archive-job.json"}
    assert written - job_files == {f"instances/{key}" for key in originals}
    readable = 0o666 & ~_umask()
    for key, original in originals.items():
        assert_decodes_to((dest / "instances" / key).read_bytes(), pydicom.dcmread(original))
        assert (dest / "instances" / key).stat().st_mode & 0o777 == readable  # as open() makes files, not 0600
    assert "--discard-originals" in _commands(dest / LEDGER)[-1]
    # `mvmic decompress` takes the instances an archive job writes as it takes .mvm files
    assert main(["decompress", str(dest / "instances" / "mr" / "IM0003"), str(tmp_path / "IM0003.dcm")]) == 0
    decoded, original = pydicom.dcmread(tmp_path / "IM0003.dcm"), pydicom.dcmread(originals["mr/IM0003"])
    assert np.array_equal(decoded.pixel_array, original.pixel_array) and decoded.SOPInstanceUID == original.SOPInstanceUID
    # --discard-originals: every original written, read back and recorded is gone; the failure is kept
    assert [path.name for path in source.rglob("*") if path.is_file()] == ["notes.txt"]
    # the next run writes again an instance gone from DEST, from the source it still has; and archives a file
    # replaced by another image of the same size and mtime (cp -p, rsync -t), which it must not discard unseen
    shutil.copy(originals["mr/IM0005"], source / "mr" / "IM0005")
    (dest / "instances" / "mr" / "IM0005").unlink()
    replacement = originals["mr/IM0007"]
    assert replacement.stat().st_size == originals["mr/IM0006"].stat().st_size
    shutil.copy(replacement, source / "mr" / "IM0006")
    with sqlite3.connect(dest / LEDGER) as db:
        [(mtime,)] = db.execute("SELECT source_mtime_ns FROM instances WHERE key = 'mr/IM0006'")
    os.utime(source / "mr" / "IM0006", ns=(mtime, mtime))
    code, out, err = finish(start(*arguments))
    assert "compressed 2, unchanged 0, failed 1" in out, out + err
    assert_decodes_to((dest / "instances" / "mr" / "IM0005").read_bytes(), pydicom.dcmread(originals["mr/IM0005"]))
    assert_decodes_to((dest / "instances" / "mr" / "IM0006").read_bytes(), pydicom.dcmread(replacement))
    assert [path.name for path in source.rglob("*") if path.is_file()] == ["notes.txt"]


def test_the_test_split_goes_into_orthanc_once_and_exact_through_a_kill(
        corpus_dir: Path, corpus_manifest, orthanc: OrthancServer, tmp_path: Path) -> None:
    source = tmp_path / "test-split"
    test_split = [entry for entry in corpus_manifest.entries if entry.split == "test"]
    for entry in test_split:
        (source / entry.path).parent.mkdir(parents=True, exist_ok=True)
        os.link(corpus_dir / entry.path, source / entry.path)  # the corpus's own files, never changed
    arguments = (str(source), "--out", str(tmp_path / "job"), "--pacs", orthanc.dicomweb, "--user", orthanc.auth[0],
                 "--password", orthanc.auth[1], "--workers", "2")

    before = kill_after(start(*arguments), tmp_path / "job" / LEDGER, len(test_split) // 3)
    code, out, err = finish(start(*arguments))

    assert code == 0, out + err
    after = rows(tmp_path / "job" / LEDGER)
    assert after.keys() == {entry.path for entry in test_split}
    assert all(state in ("compressed", "unchanged") for state, _, _ in after.values())
    assert {key for key, (_, run, _) in after.items() if run == 1} == before.keys(), \
        "the rerun did again what the killed run had done"
    pacs = DICOMwebClient(orthanc.dicomweb)
    pacs._session.auth = orthanc.auth
    stored = pacs.search_for_instances(fields=["00080018"])
    assert len(stored) == len(test_split), "an instance is missing from the PACS, or is there twice"
    assert all(orthanc.auth[1] not in command for command in _commands(tmp_path / "job" / LEDGER))  # no password
    for entry in test_split:
        original = pydicom.dcmread(corpus_dir / entry.path)
        [instance] = _retrieve_as_stored(orthanc, original)
        assert_decodes_to(instance, original)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _commands(ledger: Path) -> list[str]:
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as db:
        return [command for (command,) in db.execute("SELECT command FROM runs ORDER BY run")]


def _retrieve_as_stored(orthanc: OrthancServer, dataset: pydicom.Dataset) -> list[bytes]:
    from mvmic.pacs.client import PacsClient

    client = PacsClient(orthanc.dicomweb, orthanc.auth)
    try:
        return client.retrieve(f"studies/{dataset.StudyInstanceUID}/series/{dataset.SeriesInstanceUID}/instances/"
                               f"{dataset.SOPInstanceUID}")
    finally:
        client.close()


def test_a_pacs_study_is_compressed_in_place_with_its_originals_kept(
        corpus_dir: Path, orthanc: OrthancServer, tmp_path: Path) -> None:
    pacs = DICOMwebClient(orthanc.dicomweb)
    pacs._session.auth = orthanc.auth
    originals = [pydicom.dcmread(corpus_dir / "images" / f"pyradiomics-brain1-{index:03d}.dcm") for index in (0, 1)]
    study = originals[0].StudyInstanceUID
    pacs.store_instances(originals)  # straight into the PACS, uncompressed (a study of the train split)
    code, out, err = finish(start("--pacs", orthanc.dicomweb, "--study", study, "--user", orthanc.auth[0],
                                  "--password", orthanc.auth[1], "--out", str(tmp_path / "job"), "--workers", "1",
                                  "--analysis"))
    assert code == 0, out + err
    modalities = [item["00080060"]["Value"][0] for item in pacs.search_for_instances(study, fields=["00080060"])]
    assert sorted(modalities) == ["MR", "MR", "SEG", "SEG", "SR", "SR"]  # each image's analysis stored beside it
    for original in originals:
        [instance] = _retrieve_as_stored(orthanc, original)
        assert read_dataset(instance).file_meta.TransferSyntaxUID == MVM_TRANSFER_SYNTAX
        assert_decodes_to(instance, original)
        kept = pydicom.dcmread(tmp_path / "job" / "originals" / f"{original.SOPInstanceUID}.dcm")
        assert kept == original and np.array_equal(kept.pixel_array, original.pixel_array)
    states = rows(tmp_path / "job" / LEDGER)  # the images: their analysis objects are made, not found
    assert len(states) == len(originals) and {state for state, _, _ in states.values()} == {"compressed"}
    # a run killed after the PACS replaced an instance but before the ledger said so: the next run finds it
    # compressed with its original kept, and records it as compressed, with the original's size
    (tmp_path / "job" / LEDGER).unlink()
    code, out, err = finish(start("--pacs", orthanc.dicomweb, "--study", study, "--user", orthanc.auth[0],
                                  "--password", orthanc.auth[1], "--out", str(tmp_path / "job"), "--workers", "1",
                                  "--analysis"))
    assert code == 0 and f"compressed {len(originals)}, unchanged 4" in out, out + err  # and the SEGs and SRs
    with sqlite3.connect(tmp_path / "job" / LEDGER) as db:
        recorded = dict(db.execute("SELECT sop_instance_uid, bytes_before FROM instances WHERE state = 'compressed'"))
    kept = tmp_path / "job" / "originals"
    assert recorded == {uid: (kept / f"{uid}.dcm").stat().st_size for uid in (o.SOPInstanceUID for o in originals)}


def test_settings_that_cannot_work_are_refused_before_anything_starts(corpus_dir: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(corpus_dir / "images" / "totalsegmentator-ct-000.dcm", source)
    (tmp_path / "other").mkdir()
    Ledger(tmp_path / "other" / LEDGER, {"source": "elsewhere"}).close()
    refusals = {
        ("--out", str(tmp_path / "d")): "give SOURCE",
        (str(source), "--out", str(source / "inside")): "must not hold one another",
        (str(source), "--out", str(tmp_path / "d"), "--mode", "lossy", "--discard-originals"): "keeps no original",
        (str(tmp_path / "absent"), "--out", str(tmp_path / "d")): "not a folder",
        (str(source), "--out", str(tmp_path / "other")): "is the ledger of another job (",
    }
    for arguments, reason in refusals.items():
        assert main(["archive", "compress", *arguments]) == 1
        assert reason in capsys.readouterr().err, arguments
    with Ledger(tmp_path / "d" / LEDGER, {}) as running:  # another job holds DEST's ledger
        assert main(["archive", "compress", str(source), "--out", str(tmp_path / "d")]) == 1
        assert "another archive job is running" in capsys.readouterr().err and running.run is None
    assert main(["archive", "compress", str(source), "--out", str(tmp_path / "e"), "--ledger",
                 str(source / "ledger.sqlite")]) == 1
    assert "must not be inside SOURCE" in capsys.readouterr().err
    (tmp_path / "f").mkdir()
    with exclusive(tmp_path / "f" / "archive.lock", "DEST"):  # another job writes into DEST, with its own ledger
        assert main(["archive", "compress", str(source), "--out", str(tmp_path / "f"), "--ledger",
                     str(tmp_path / "f.sqlite")]) == 1
        assert "another archive job is running with DEST" in capsys.readouterr().err
    (tmp_path / "f" / "archive-job.json").write_text('{"max_error": null}')  # a lossy job's output
    assert main(["archive", "compress", str(source), "--out", str(tmp_path / "f"), "--ledger",
                 str(tmp_path / "f.sqlite")]) == 1
    assert "holds the output of another job (" in capsys.readouterr().err
    assert main(["archive", "compress", "--pacs", "http://127.0.0.1:1/", "--study", "../x", "--out",
                 str(tmp_path / "g")]) == 1
    assert "not a Study Instance UID" in capsys.readouterr().err
    (tmp_path / "file").write_text("a file")
    assert main(["archive", "compress", str(source), "--out", str(tmp_path / "file")]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["archive", "compress", str(source), "--out", str(tmp_path / "h"), "--address", "127.0.0.1:1"]) == 1
    assert "no Ray cluster answers at 127.0.0.1:1" in capsys.readouterr().err
    assert main(["decompress", str(source / "totalsegmentator-ct-000.dcm"), str(tmp_path / "x.dcm")]) == 1
    assert "not an MVMIC instance" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse's own refusal (exit status 2)
        main(["archive", "compress", str(source), "--out", str(tmp_path / "d"), "--workers", "0"])
    assert "at least 1" in capsys.readouterr().err
    assert not (tmp_path / "e").exists(), "a refused job wrote something"
