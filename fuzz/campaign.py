"""A fuzzing campaign (`make fuzz`): every target for a number of inputs, and what libFuzzer reported.

    python fuzz/campaign.py [--runs 100000] [--out results/fuzz] [--jobs 1] [target ...]

Each target runs in its own process (fuzz/<target>.py, libFuzzer through atheris) until it has run ``--runs``
inputs or found a crash, a timeout (an input over 10 s) or an out-of-memory (over 3 GiB RSS); libFuzzer
stops at the first. Its output goes to <out>/<target>/fuzz.log, what it found to <out>/<target>/
(crash-*, timeout-*, oom-*), the summary to <out>/fuzz.json and <out>/fuzz.md: inputs run, exec/s,
coverage (libFuzzer's cov: edges and ft: features of the instrumented Python code), corpus, peak RSS and
the findings. The exit status is 1 if any target found something or did not run all its inputs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent
REPO_ROOT = FUZZ_DIR.parent
TARGETS = ("mvm_decoder", "mvm_instance", "dicom_input")
FINDINGS = ("crash", "timeout", "oom", "leak")  # libFuzzer names the input of each finding <kind>-<sha1>


def fuzz_target(target: str, runs: int, out: Path, extra: tuple[str, ...] = ()) -> dict:
    """Run one target for ``runs`` inputs (its seeds, corpus and findings under ``out``/``target``); what
    libFuzzer reported (parse_log), with the exit status."""
    log = out / target / "fuzz.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    before = set(_finding_files(out / target))
    environment = {**os.environ, "MVMIC_FUZZ_DIR": str(out),
                   "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO_ROOT), os.environ.get("PYTHONPATH"))))}
    with log.open("w") as output:
        process = subprocess.run([sys.executable, str(FUZZ_DIR / f"{target}.py"), f"-runs={runs}",
                                  "-print_final_stats=1", *extra], stdout=output, stderr=subprocess.STDOUT,
                                 env=environment, cwd=REPO_ROOT, check=False)
    found = sorted(set(_finding_files(out / target)) - before)
    return {"target": target, "asked": runs, "exit_status": process.returncode, "log": str(log),
            **parse_log(log.read_text(errors="replace"), found)}


def _finding_files(folder: Path) -> list[str]:
    return [str(path) for path in folder.glob("*-*") if path.name.split("-")[0] in FINDINGS]


def parse_log(text: str, files: list[str] = ()) -> dict:
    """libFuzzer's figures in a target's output: inputs run, seconds, exec/s, cov and ft of the last status
    line, corpus size, peak RSS, and the findings (kind and file: the ``files`` of the run, and those the
    log names)."""
    done = re.search(r"^Done (\d+) runs in (\d+) second", text, re.MULTILINE)
    stats = dict(re.findall(r"^stat::(\w+):\s+(\d+)", text, re.MULTILINE))
    status = re.findall(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/", text, re.MULTILINE)
    last = status[-1] if status else (None, None, None, None)
    findings = [{"kind": Path(path).name.split("-")[0], "file": path}
                for path in sorted({*files, *re.findall(r"Test unit written to (\S+)", text)})]
    executed = stats.get("number_of_executed_units") or (done and done.group(1)) or last[0]
    return {
        "done": bool(done),
        "done_runs": int(done.group(1)) if done else None,  # libFuzzer's "Done N runs in S second(s)"
        "inputs": int(executed) if executed is not None else 0,
        "seconds": int(done.group(2)) if done else None,
        "exec_per_s": int(stats["average_exec_per_sec"]) if "average_exec_per_sec" in stats else None,
        "cov": int(last[1]) if last[1] else None,
        "ft": int(last[2]) if last[2] else None,
        "corpus": int(last[3]) if last[3] else None,
        "peak_rss_mb": int(stats["peak_rss_mb"]) if "peak_rss_mb" in stats else None,
        "crashes": sum(f["kind"] == "crash" for f in findings),
        "timeouts": sum(f["kind"] == "timeout" for f in findings),
        "ooms": sum(f["kind"] == "oom" for f in findings),
        "findings": findings,
        "error": _error(text) if findings or not done else None,
    }


def _error(text: str) -> str | None:
    """The first line of what ended the run: libFuzzer's ERROR line, or the Python exception above it."""
    exception = re.search(r"=== Uncaught Python exception: ===\n(.+)", text)
    if exception:
        return exception.group(1)
    error = re.search(r"ERROR: libFuzzer: (.+)", text)
    return error.group(1) if error else (text.strip().splitlines() or [""])[-1]


def campaign(targets: tuple[str, ...], runs: int, out: Path, jobs: int = 1) -> dict:
    """Every target for ``runs`` inputs (``jobs`` at a time); the summary, written to out/fuzz.json and .md."""
    started, commit = datetime.datetime.now(datetime.UTC), _commit()  # what the targets run, not what follows
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(lambda target: fuzz_target(target, runs, out), targets))
    summary = {"date": started.isoformat(timespec="seconds"), "commit": commit, "runs_per_target": runs,
               "flags": "-timeout=10 -rss_limit_mb=3072 -max_len=5/4 of the largest seed", "targets": results}
    (out / "fuzz.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "fuzz.md").write_text(markdown(summary) + "\n")
    return summary


def markdown(summary: dict) -> str:
    lines = [f"# Fuzzing: {summary['runs_per_target']} inputs per target, {summary['date']}, commit {summary['commit']}",
             "", f"libFuzzer (atheris), {summary['flags']}; cov/ft: edges and features of the instrumented code.", "",
             "| target | inputs | seconds | exec/s | cov | ft | corpus | crashes | timeouts | ooms | peak RSS MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in summary["targets"]:
        lines.append(f"| {r['target']} | {r['inputs']} | {r['seconds']} | {r['exec_per_s']} | {r['cov']} | {r['ft']} | "
                     f"{r['corpus']} | {r['crashes']} | {r['timeouts']} | {r['ooms']} | "
                     f"{r['peak_rss_mb']} |")
    for r in summary["targets"]:
        if r["findings"] or not r["done"]:
            files = ", ".join(f["file"] for f in r["findings"]) or "none"
            lines += ["", (f"{r['target']} stopped after {r['inputs']} inputs: {r['error']} (inputs: {files}; "
                          f"log: {r['log']})")]
    return "\n".join(lines)


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return f"{commit}{'+changes' if git('status', '--porcelain', '--untracked-files=no') else ''}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", metavar="target", help=f"default: all of {', '.join(TARGETS)}")
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "fuzz")
    parser.add_argument("--jobs", type=int, default=1, help="targets fuzzed at the same time")
    args = parser.parse_args(argv)
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}: {', '.join(TARGETS)}")
    summary = campaign(tuple(args.targets or TARGETS), args.runs, args.out, args.jobs)
    print(markdown(summary))
    return 0 if all(r["done"] and not r["findings"] for r in summary["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
