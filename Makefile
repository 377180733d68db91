# Every target installs through the same stamp, so a fresh checkout, CI and
# the Docker images all get the venv the same way.
PYTHON ?= $(if $(shell command -v python3.11),python3.11,python3)
PORT ?= 8000
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench lint clean

# Re-install whenever pyproject.toml changes. One pip command, so pip
# resolves all dependencies together.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $@

run: $(STAMP)
	$(BIN)/mvmic serve --host 127.0.0.1 --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/mvmic data prepare
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/mvmic bench rd

# Leaves data/ alone: the corpus is slow to rebuild.
clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
