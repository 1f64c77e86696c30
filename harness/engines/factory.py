"""Which engine evaluates, and the engines of one run built from loaded or saved models.

``--engine auto|hf|vllm`` (default: ``$HARNESS_ENGINE``, else ``auto``): ``auto`` is vLLM where it
is installed, HF otherwise. ``EvalEngines`` builds, per evaluated model, the engine that the
evaluation talks to: the HF engine alone, or vLLM with the HF engine behind it for requests that
need the full distribution (``RoutedEngine``), each behind the evaluation cache under its own
settings, so HF and vLLM outputs never share a cache entry. One vLLM runtime serves every model
of the run (target, retain, each unlearned model) and is closed with the run.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from harness.engines.hf import HFEngine
from harness.engines.base import RoutedEngine
from harness.errors import HarnessError

ENGINES = ("auto", "hf", "vllm")
VLLM_DTYPES = ("auto", "float32", "bfloat16", "float16")   # eval.vllm_dtype


def default_engine() -> str:
    return os.environ.get("HARNESS_ENGINE", "auto")


def resolve_engine(name: str | None) -> str:
    """'hf' or 'vllm' for a requested engine name, or a clear error."""
    from harness.engines.vllm import INSTALL_HINT, vllm_available

    name = (name or default_engine()).strip().lower()
    if name not in ENGINES:
        raise HarnessError(f"unknown engine '{name}'; choose one of: {', '.join(ENGINES)}.")
    if name == "auto":
        return "vllm" if vllm_available() else "hf"
    if name == "vllm" and not vllm_available():
        raise HarnessError(f"--engine vllm was asked for, but vLLM is not installed; {INSTALL_HINT}, or use --engine hf.")
    return name


def vllm_dtype(setting: str, model) -> str:
    """'auto' is the HF model's own dtype (fp32 on CPU, bf16 on GPU), so both engines compute alike."""
    if setting in ("", "auto"):
        return str(next(model.parameters()).dtype).removeprefix("torch.")
    if setting not in VLLM_DTYPES:
        raise HarnessError(f"eval.vllm_dtype must be one of {', '.join(VLLM_DTYPES)}, got '{setting}'.")
    return setting


def vllm_logprobs_engine(setting: str, device: torch.device) -> str:
    """The engine that scores log-prob requests under ``--engine vllm`` (``eval.vllm_logprobs``).

    ``auto`` is the HF engine on a CPU: there vLLM's prompt log-probs ran at 0.6-1.1x the HF
    engine's speed (it computes the output layer and the log-softmax at every prompt position,
    the HF engine only where a token is scored; docs/engines.md), while its generation is faster.
    On a GPU ``auto`` is vLLM (not yet measured there). Both give the same scores at fp32.
    """
    if setting != "auto":
        return setting
    return "hf" if device.type == "cpu" else "vllm"


class EvalEngines:
    """The evaluation engines of one run; ``for_model`` per evaluated model, ``close`` at the end."""

    def __init__(self, kind: str, eval_cfg, device: torch.device, log=print):
        self.kind, self.eval_cfg, self.device, self.log = kind, eval_cfg, device, log
        self.runtime = None

    def _runtime(self, model):
        from harness.engines.vllm import VLLMRuntime

        dtype = vllm_dtype(self.eval_cfg.vllm_dtype, model)
        if self.runtime is not None and self.runtime.dtype != dtype:
            self.runtime.close()
            self.runtime = None
        if self.runtime is None:
            self.runtime = VLLMRuntime(dtype, self.device.type, self.eval_cfg.vllm_tensor_parallel,
                                       self.eval_cfg.vllm_gpu_memory, self.eval_cfg.vllm_kv_cache_gib, self.log)
        return self.runtime

    @staticmethod
    def _cached(engine, model, tokenizer, cache):
        if cache is None:
            return engine
        from harness.engines.cache import CachedEngine, model_key

        return CachedEngine(engine, cache, model_key(model, tokenizer, engine.settings()))

    def for_model(self, loaded, folder: Path | None = None, cache=None) -> RoutedEngine:
        """The engine for ``loaded``, behind ``cache`` (an ``EvalCache``) when given; ``folder`` holds
        exactly its weights (else vLLM gets them written from memory when it first needs them)."""
        hf = HFEngine(loaded.model, loaded.tokenizer, self.eval_cfg.batch_size, self.eval_cfg.max_length,
                      memory_budget_gb=self.eval_cfg.memory_budget_gb)
        hf = self._cached(hf, loaded.model, loaded.tokenizer, cache)
        if self.kind == "hf":
            return RoutedEngine(hf)
        from harness.engines.vllm import VLLMEngine

        vllm = VLLMEngine(self._runtime(loaded.model), loaded.model, loaded.tokenizer, self.eval_cfg.max_length, folder)
        to_hf = vllm_logprobs_engine(self.eval_cfg.vllm_logprobs, self.device) == "hf"
        return RoutedEngine(self._cached(vllm, loaded.model, loaded.tokenizer, cache), hf, logprobs_to_full=to_hf)

    def release(self) -> None:
        """Before training: give accelerator memory back (vLLM sleeps on a GPU)."""
        if self.runtime is not None:
            self.runtime.release()

    def timings(self) -> dict:
        return self.runtime.timings() if self.runtime is not None else {}

    def close(self) -> None:
        if self.runtime is not None:
            self.runtime.close()
            self.runtime = None
