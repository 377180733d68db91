"""`make fuzz-api`: schemathesis against the OpenAPI of a real gateway in front of a real Orthanc.

    Orthanc (mvmic.pacs.orthanc, in a private network namespace) <-- the service (mvmic.service.process: uvicorn,
    MVMIC_PACS_URL, MVMIC_API_TOKENS)
      --prepare_seeds: small corpus images stored through the gateway (STOW-RS), and compressed by it (.mvm,
        and the DICOM instance that holds one)-->
      st run (every phase, --max-examples per operation, the bearer token; hooks: mvmic.bench.api_fuzz_hooks)
      --> results/api-fuzz/: schemathesis's JSON and JUnit reports, the service's and Orthanc's logs;
          printed: operations, test cases, failures by kind, server errors (the goal: 0)

Generated data alone never gets past the first check of most routes (random bytes are not DICOM, nor
a .mvm, nor multipart), so the hooks (install_hooks) mix into what schemathesis generates: the seeds and
byte mutations of them as bodies, the stored instance's UIDs as path parameters, the STOW-RS boundary
of the seeds in the Content-Type, and Accept headers the routes negotiate on. The CI test
(tests/test_openapi.py) runs the same with 10 examples per operation and a fixed seed.

Run it inside a private network namespace (make fuzz-api does): scripts/private-network
.venv/bin/python -m mvmic.bench.api_fuzz [--max-examples N] [-- other st run options]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from pydicom.dataset import Dataset

from mvmic.pacs.multipart import related_body
from mvmic.pacs.orthanc import running_orthanc
from mvmic.paths import REPO_ROOT
from mvmic.service.process import running_service

SEED_IMAGES = ("pydicom-MR_small", "pydicom-CT_small")  # 64x64 MR, 128x128 CT: fast to code
TOKEN = "api-fuzz-token"
SEEDS_VARIABLE = "MVMIC_API_FUZZ_SEEDS"  # the seeds file mvmic.bench.api_fuzz_hooks reads
DICOM = "application/dicom"
STOW = ("/dicomweb/studies", "/dicomweb/studies/{study}")
# What the routes negotiate on (mvmic.service.negotiation: negotiate for the /v1 routes, media_ranges for WADO-RS), and what they refuse
RELATED = 'multipart/related; type="application/dicom"'
ACCEPTS = ("*/*", "application/json", "application/octet-stream", DICOM, "text/html", "application/*;q=0.5",
           RELATED, f"{RELATED}; transfer-syntax=*", f"{RELATED}; transfer-syntax=1.2.840.10008.1.2.4.50",
           f"{RELATED}; transfer-syntax=1.2.840.10008.1.2.2", f"{RELATED}; transfer-syntax=not-a-uid",
           f"{RELATED}; transfer-syntax=1.2.840.10008.1.2.4.50, {RELATED}; transfer-syntax=*",
           "multipart/related; type=x", "multipart/*", "application/dicom+json", ",", ";")


@dataclass(frozen=True)
class Seeds:
    """Real inputs of each body-taking route, by "METHOD path" (bytes, base64 in JSON), the UIDs of a stored
    instance, and the Content-Type (with its boundary) of the STOW-RS seeds."""

    bodies: dict[str, list[bytes]]
    uids: dict[str, str]  # study, series, instance
    stow_content_type: str

    def save(self, path: Path) -> None:
        encoded = {key: [base64.b64encode(body).decode("ascii") for body in bodies] for key, bodies in self.bodies.items()}
        path.write_text(json.dumps({**asdict(self), "bodies": encoded}))

    @classmethod
    def load(cls, path: Path) -> Seeds:
        data = json.loads(path.read_text())
        return cls({key: [base64.b64decode(body) for body in bodies] for key, bodies in data["bodies"].items()},
                   data["uids"], data["stow_content_type"])


def gateway_environment(orthanc, token: str = TOKEN) -> dict[str, str]:
    """MVMIC_* settings of a gateway in front of ``orthanc`` (an OrthancServer) that takes ``token``."""
    return {"MVMIC_PACS_URL": orthanc.dicomweb, "MVMIC_PACS_USER": orthanc.auth[0],
            "MVMIC_PACS_PASSWORD": orthanc.auth[1], "MVMIC_API_TOKENS": json.dumps([token])}


def prepare_seeds(url: str, token: str, images: list[Path]) -> Seeds:
    """Stores ``images`` through the gateway at ``url`` and has it compress them; RuntimeError if it cannot."""
    auth = {"Authorization": f"Bearer {token}"}
    originals = [path.read_bytes() for path in images]
    with httpx.Client(base_url=url, headers=auth, timeout=300) as client:
        streams = [_ok(client.post("/v1/compress", content=data, headers={"Accept": "application/octet-stream"}))
                   for data in originals]
        holders = [_ok(client.post("/v1/compress", content=data, headers={"Accept": DICOM})) for data in originals]
        stow, content_type = related_body(originals, DICOM)
        stored = Dataset.from_json(_ok(client.post("/dicomweb/studies", content=stow,
                                                   headers={"Content-Type": content_type}), json=True))
    study, series, instance = stored.ReferencedSOPSequence[0].RetrieveURL.split("/dicomweb/", 1)[1].split("/")[1::2]
    bodies = {"POST /v1/compress": originals, "POST /v1/decompress": streams + holders, "POST /v1/analyze": streams,
              **{f"POST {path}": [stow] for path in STOW}}
    return Seeds(bodies, {"study": study, "series": series, "instance": instance}, content_type)


def _ok(response: httpx.Response, json: bool = False):
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.method} {response.request.url.path}: HTTP {response.status_code} "
                           f"{response.text[:300]}")
    return response.json() if json else response.content


def install_hooks(seeds: Seeds) -> None:
    """Registers schemathesis's global hooks that mix ``seeds`` into generated cases (mvmic.bench.api_fuzz_hooks
    calls it in `st run`)."""
    import schemathesis
    from hypothesis import strategies as st

    schemathesis.serializer.alias([DICOM, "multipart/related"], "application/octet-stream")
    stow_media_type = seeds.stow_content_type

    def before_generate_body(context, strategy):
        bodies = seeds.bodies.get(_key(context.operation))
        return strategy | _mutations(st, bodies) if bodies else strategy

    def before_generate_path_parameters(context, strategy):
        names = re.findall(r"{(\w+)}", context.operation.path)
        return strategy | st.just({name: seeds.uids[name] for name in names}) if names else strategy

    def before_generate_case(context, strategy):
        if context.operation.method.upper() == "POST" and context.operation.path in STOW:
            # without the boundary, every body is refused before it is read
            return strategy.map(lambda case: _with_header(case, "Content-Type", stow_media_type))
        accept = st.sampled_from(ACCEPTS) | st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=40)
        return st.tuples(strategy, st.none() | accept).map(
            lambda pair: pair[0] if pair[1] is None else _with_header(pair[0], "Accept", pair[1]))

    for hook in (before_generate_body, before_generate_path_parameters, before_generate_case):
        schemathesis.hook(hook)


def _key(operation) -> str:
    return f"{operation.method.upper()} {operation.path}"


def _mutations(st, samples: list[bytes]):
    """``samples`` as they are, with a few bytes overwritten, or cut short."""
    def mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
        out = bytearray(data)
        for position, value in edits:
            out[position % len(out)] = value
        return bytes(out[:cut] if cut else out)

    edits = st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)), max_size=6)
    return st.builds(mutate, st.sampled_from(samples), edits, st.none() | st.integers(1, 2**20))


def _with_header(case, name: str, value: str):
    case.headers = {**(case.headers or {}), name: value}
    return case


# Checks left out: positive_data_acceptance (a body of the declared type, random bytes, is rightly refused: the
# schema cannot say "DICOM"); allow_header_conformance (Starlette's 405 for a path two routes serve, GET and
# POST /dicomweb/studies, lists the methods of the first only); ensure_resource_availability (stateful: a
# mutated seed stored under the seed's SOP Instance and Series UIDs in another study makes the PACS hold two
# instances under one UID, after which Orthanc 1.10 answers 404 for both: the PACS's answer, passed on).
EXCLUDED_CHECKS = ("positive_data_acceptance", "allow_header_conformance", "ensure_resource_availability")


def st_command(url: str, max_examples: int, out: Path, seed: int | None) -> list[str]:
    """The `st run` of the whole API: every phase, every check but EXCLUDED_CHECKS, the bearer token."""
    return [str(Path(sys.executable).with_name("st")), "run", f"{url}/openapi.json",
            "--header", f"Authorization: Bearer {TOKEN}", "--max-examples", str(max_examples), "--workers", "1",
            "--checks", "all", "--exclude-checks", ",".join(EXCLUDED_CHECKS),
            "--generation-database", "none", "--request-timeout", "120", "--no-color",
            "--report", "json,junit", "--report-dir", str(out), "--report-json-path", str(out / "report.json"),
            "--report-junit-path", str(out / "junit.xml"), *(["--seed", str(seed)] if seed is not None else [])]


def fuzz(url: str, images: list[Path], out: Path, max_examples: int, seed: int | None = None,
         options: tuple[str, ...] = (), output: Path | None = None) -> dict:
    """Seeds the gateway at ``url`` with ``images``, runs `st run` against it (printing, or into ``output``),
    and returns the figures of its JSON report (``summary``, also written to out/summary.json)."""
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    prepare_seeds(url, TOKEN, images).save(out / "seeds.json")
    # st runs in ``out``: its cache of failing cases (.schemathesis/, replayed first by the next run) stays there
    environment = {**os.environ, "SCHEMATHESIS_HOOKS": "mvmic.bench.api_fuzz_hooks", SEEDS_VARIABLE: str(out / "seeds.json"),
                   "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO_ROOT), os.environ.get("PYTHONPATH"))))}
    with open(output, "wb") if output else nullcontext() as log:
        code = subprocess.run([*st_command(url, max_examples, out, seed), *options], env=environment, cwd=out,
                              check=False, stdout=log, stderr=subprocess.STDOUT if log else None).returncode
    figures = summary(json.loads((out / "report.json").read_text()), code)
    (out / "summary.json").write_text(json.dumps(figures, indent=1) + "\n")
    return figures


def summary(report: dict, exit_code: int) -> dict:
    """Operations, test cases, failures and errors by kind, and server errors: ST101 failures (5xx) and
    network errors (a dropped connection) of schemathesis's JSON report."""
    failures = {f"{item['code']} {item['title']}": item["count"] for item in report["failures"]}
    errors = {item["title"]: item["count"] for item in report["errors"]}
    server = sum(item["count"] for item in report["failures"] if item["code"] == "ST101")
    return {"schemathesis": report["schemathesis_version"], "seed": report["seed"], "exit_code": exit_code,
            "running_time_s": round(report["running_time"], 1), "operations": report["operations"]["tested"],
            "phases": {name: phase["status"] for name, phase in report["phases"].items()},
            "test_cases": report["test_cases"]["generated"], "failures": failures, "errors": errors,
            "server_errors": server + sum(count for title, count in errors.items() if "Network" in title)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mvmic.bench.api_fuzz", description=__doc__.split("\n")[0])
    parser.add_argument("--max-examples", type=int, default=500, help="per operation (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=None, help="schemathesis's random seed (default: a new one)")
    parser.add_argument("--corpus", type=Path, default=Path("data/corpus"), help="corpus folder (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("results/api-fuzz"), help="output folder (default: %(default)s)")
    parser.add_argument("st_options", nargs="*", help="more `st run` options, after --")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with gateway_in_front_of_orthanc(args.out) as url:
        figures = fuzz(url, [args.corpus / "images" / f"{name}.dcm" for name in SEED_IMAGES], args.out,
                       args.max_examples, args.seed, tuple(args.st_options))
    print(json.dumps(figures, indent=1))
    return figures["exit_code"]


@contextmanager
def gateway_in_front_of_orthanc(out: Path) -> Iterator[str]:
    """Base URL of a gateway (TOKEN) in front of a fresh Orthanc; their logs end up in ``out``."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            with running_orthanc(Path(folder) / "orthanc") as orthanc, \
                    running_service(out / "uvicorn.log", gateway_environment(orthanc)) as url:
                yield url
        finally:
            if (Path(folder) / "orthanc" / "orthanc.log").is_file():
                shutil.copy(Path(folder) / "orthanc" / "orthanc.log", out / "orthanc.log")


if __name__ == "__main__":
    sys.exit(main())
