# Every target installs through the same stamp, so a fresh checkout, CI and
# the Docker images all get the venv the same way.
PYTHON ?= $(if $(shell command -v python3.11),python3.11,python3)
PORT ?= 8000
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench lint clean test-tools fuzz

# Re-install whenever pyproject.toml or the C kernels change (pip builds mvmic/model/table_coder.c).
# One pip command, so pip resolves all dependencies together.
$(STAMP): pyproject.toml setup.py mvmic/model/table_coder.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	$(BIN)/python -m mvmic.model.lossless.warm
	touch $@

run: $(STAMP)
	$(BIN)/mvmic serve --host 127.0.0.1 --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check .

# Debian tools of the tests: the PACS of the integration tests (Orthanc and its DICOMweb plugin),
# docker-compose, which checks the compose files (no Docker engine needed), dicom3tools, whose
# dciodvfy checks every kind of DICOM instance MVMIC writes against the standard's IODs, and chromium,
# the browser Playwright drives through the page under /ui/ (tests/test_ui.py).
test-tools:
	@test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so && command -v docker-compose >/dev/null \
	  && command -v dciodvfy >/dev/null && command -v chromium >/dev/null || { \
	  [ "$$(id -u)" -eq 0 ] || { echo "install orthanc, orthanc-dicomweb, docker-compose, dicom3tools and chromium (as root: make test-tools)"; exit 1; }; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q orthanc orthanc-dicomweb docker-compose dicom3tools chromium; }

# pytest runs in a private network namespace (loopback only): Orthanc 1.10 listens on every interface.
test: lint test-tools
	$(BIN)/mvmic data prepare
	scripts/private-network $(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/mvmic bench rd

# Coverage-guided fuzzing (atheris/libFuzzer) of the .mvm decoder, the MVMIC instance decoder and the DICOM input
# path: FUZZ_RUNS inputs per target; findings and the summary (fuzz.md, fuzz.json) in results/fuzz/.
FUZZ_RUNS ?= 100000
fuzz: $(STAMP)
	nice -n 10 $(BIN)/python fuzz/campaign.py --runs $(FUZZ_RUNS)

# schemathesis against the whole OpenAPI of a real gateway in front of a real Orthanc (mvmic/bench/api_fuzz.py):
# every phase, FUZZ_API_EXAMPLES per operation, a new seed each run (SEED=N to replay one); reports and
# logs in results/api-fuzz/. tests/test_openapi.py runs the same in CI with 10 examples.
FUZZ_API_EXAMPLES ?= 500
.PHONY: fuzz-api
fuzz-api: $(STAMP) test-tools
	$(BIN)/mvmic data prepare
	scripts/private-network $(BIN)/python -m mvmic.bench.api_fuzz --max-examples $(FUZZ_API_EXAMPLES) $(if $(SEED),--seed $(SEED))

# Leaves data/ alone: the corpus is slow to rebuild.
clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
