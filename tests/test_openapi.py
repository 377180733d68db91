"""The OpenAPI document of the service, against the real thing: schemathesis (`st run`, every phase) generates
requests for every operation of a real gateway (a uvicorn process, bearer tokens on) in front of a real Orthanc;
none may get a server error (5xx, or a dropped connection), and every answer must be one the document declares
(status, media type, schema), refusing what the document says is invalid and what carries no token.

mvmic.bench.api_fuzz runs it, with hooks that mix real inputs into what schemathesis generates (seeds stored through
the gateway and compressed by it, byte mutations of them, their UIDs, Accept headers), so the requests reach the
codec and the PACS, not only the first check of each route. `make fuzz-api` is the same with 500 examples per
operation and a new seed each time; here, few examples and a fixed seed. (schemathesis's pytest API, whose
fixture-loaded schemas fail on pytest 9 in schemathesis 4.32.5, is not used.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_pacs import serve_gateway

from mvmic.bench.api_fuzz import SEED_IMAGES, TOKEN, fuzz
from mvmic.pacs.orthanc import OrthancServer
from mvmic.service.app import create_app

EXAMPLES = 10  # per operation, in the fuzzing and stateful phases (the coverage phase makes its own)
SEED = 18


def test_every_operation_answers_as_declared_never_with_a_server_error(
        tmp_path_factory: pytest.TempPathFactory, orthanc: OrthancServer, corpus_dir: Path, tmp_path: Path) -> None:
    images = [corpus_dir / "images" / f"{name}.dcm" for name in SEED_IMAGES]
    for url in serve_gateway(tmp_path_factory, orthanc, MVMIC_API_TOKENS=json.dumps([TOKEN])):
        figures = fuzz(url, images, tmp_path, EXAMPLES, SEED, output=tmp_path / "st.log")
    print(figures)
    report = (tmp_path / "st.log").read_text()[-8000:]
    assert figures["operations"] == 25 and figures["test_cases"] > 25 * EXAMPLES, report
    assert figures["server_errors"] == 0 and not figures["failures"] and not figures["errors"], report
    assert figures["exit_code"] == 0, report


def test_the_document_declares_what_the_routes_read() -> None:
    """The bodies the routes read raw, every path parameter and only those the routes read, and the bearer
    scheme (before, schemathesis sent no body to the routes that read one, could not fill {study} in the QIDO
    routes, and sent ?study= and ?series= that no route reads)."""
    document = create_app().openapi()
    operations = {f"{method.upper()} {path}": operation
                  for path, methods in document["paths"].items() for method, operation in methods.items()}
    assert len(operations) == 25
    for key, operation in operations.items():
        path = key.split(" ", 1)[1]
        in_path = {parameter["name"] for parameter in operation.get("parameters", []) if parameter["in"] == "path"}
        assert in_path == set(re.findall(r"{(\w+)}", path)), key
        assert ("requestBody" in operation) == key.startswith("POST"), key
        if path.startswith(("/v1", "/dicomweb")):
            assert operation["security"] == [{"HTTPBearer": []}] and "401" in operation["responses"], key

    def names(key: str) -> set[str]:
        return {parameter["name"] for parameter in operations[key].get("parameters", [])}

    assert set(operations["POST /v1/compress"]["requestBody"]["content"]) == {"application/dicom"}
    assert set(operations["POST /v1/decompress"]["requestBody"]["content"]) == {"application/octet-stream",
                                                                               "application/dicom"}
    stow = operations["POST /dicomweb/studies/{study}"]["requestBody"]
    assert stow["required"] and set(stow["content"]) == {'multipart/related; type="application/dicom"'}
    assert names("POST /dicomweb/studies") == {"analysis"}
    assert names("GET /dicomweb/studies/{study}/series/{series}") == {"study", "series"}
    assert names("GET /dicomweb/studies/{study}/metadata") == {"study"}
    assert {"limit", "offset", "includefield", "PatientID"} <= names("GET /dicomweb/studies/{study}/series")


NOT_JSON = {"GET /metrics", "POST /v1/decompress", "GET /dicomweb/studies/{study}",  # Prometheus text, DICOM,
            "GET /dicomweb/studies/{study}/series/{series}",  # and WADO-RS's multipart/related
            "GET /dicomweb/studies/{study}/series/{series}/instances/{instance}",
            "GET /v1/benchmarks/rd.png", "GET /v1/benchmarks/tasks.png"}  # the benchmarks' figures


def test_every_json_answer_declares_its_fields(service_url: str) -> None:
    """The success answer of every operation that answers JSON (application/json, application/dicom+json) declares
    the fields of its body in the served document (before, /v1/compress, /v1/analyze declared an empty schema,
    /readyz and /v1/models a free-form object); every operation but NOT_JSON answers JSON, and every body read or
    answered has a schema (bytes: a binary string)."""
    document = httpx.get(f"{service_url}/openapi.json", timeout=30).json()
    components = document["components"]["schemas"]

    def fields(schema: dict[str, Any]) -> dict[str, Any]:
        """The properties a body of ``schema`` has: of an object, of each item of an array, of each value of a map."""
        if "$ref" in schema:
            return fields(components[schema["$ref"].rsplit("/", 1)[1]])
        if schema.get("type") == "array":
            return fields(schema.get("items", {}))
        properties = schema.get("properties", {})
        if isinstance(schema.get("additionalProperties"), dict):
            properties = {**properties, **fields(schema["additionalProperties"])}
        return properties

    answering_json = set()
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            key = f"{method.upper()} {path}"
            success = min(code for code in operation["responses"] if code.startswith("2"))
            answers = operation["responses"][success].get("content", {})
            bodies = operation.get("requestBody", {}).get("content", {})
            assert answers, key  # every operation says what it answers, bytes included, and what it reads
            for side in (answers, bodies):
                assert [media_type for media_type, body in side.items() if not body.get("schema")] == [], key
            for media_type, body in answers.items():
                if media_type.split(";")[0].endswith(("/json", "+json")):
                    answering_json.add(key)
                    assert fields(body.get("schema", {})), f"{key} {success} {media_type}"
    assert answering_json == {f"{method.upper()} {path}" for path, methods in document["paths"].items()
                              for method in methods} - NOT_JSON
    compressed = fields({"$ref": "#/components/schemas/CompressedInstance"})
    assert list(compressed)[:3] == ["model_id", "bitstream", "bytes"] and "frames" in fields(compressed["analysis"]
                                                                                                  ["anyOf"][0])
