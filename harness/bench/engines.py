"""`harness bench --engine vllm`: the vLLM engine against the HF engine on the same requests.

Figures, not a timed test. Both engines evaluate the benchmark's whole plan on the same weights
(the HF engine: the harness's shared evaluation; vLLM: generation and log-probs, with the
requests that need the full distribution answered by the HF engine, as in a run). Reported:
wall time and tokens per second of each stage, vLLM's start-up (import and ``LLM()``) and the
time to switch to another model's weights (a reload of the same weights from another folder),
peak memory of this process and of vLLM's engine processes, how close each engine's decoding
of one sequence comes to the memory-bandwidth bound (``harness/engines/roofline.py``), and whether the
scores are the same: generations identical, the largest aggregate difference, and whether every
leaderboard cell prints the same. The last line reads
``vllm vs hf: generation X.XXx, log-probs Y.YYx, evaluation Z.ZZx (scores identical at the precision shown: yes|no)``.
"""
from __future__ import annotations

import resource
import time
from pathlib import Path

import torch

from harness.bench.report import compare, plan_tokens
from harness.engines.hf import HFEngine
from harness.engines.base import RoutedEngine
from harness.engines.factory import vllm_dtype
from harness.engines.plan import EvalPlan, run_plan
from harness.engines.roofline import copy_bandwidth, kv_bytes_per_token, measure_decoding, streamed_weight_bytes

#: decoding steps timed for the bandwidth figure (one sequence, no early end)
DECODE_STEPS = 64


def _warm_plan(plan: EvalPlan) -> EvalPlan:
    """Two requests of the first list of each stage: one-off set-up costs stay out of the timings."""
    return EvalPlan(generations={k: v[:2] for k, v in list(plan.generations.items())[:1]},
                    logprobs={k: v[:2] for k, v in list(plan.logprobs.items())[:1]})


def child_peak_memory_mb() -> float:
    """Peak resident memory (VmHWM) summed over this process's live children: vLLM's engine processes."""
    import psutil

    total = 0
    for child in psutil.Process().children(recursive=True):
        try:
            for line in Path(f"/proc/{child.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def same_cells(bench_cls, a: dict, b: dict) -> bool:
    """Whether every leaderboard column prints the same for both sets of aggregates."""
    for column in bench_cls.columns:
        x, y = a.get(column.key), b.get(column.key)
        if isinstance(x, (int, float)) and isinstance(y, (int, float)):
            if column.format(x) != column.format(y):
                return False
        elif x != y:
            return False
    return True


def report_engines(bench, loaded, args, device, folder: Path | None, out=print, runtime=None) -> float:
    """Print the vLLM-vs-HF figures; return vLLM's evaluation speedup (HF wall time / vLLM wall time).

    ``runtime``: an already running ``VLLMRuntime`` to use (and leave running), else a new one.
    """
    from harness.engines.vllm import VLLMEngine, VLLMRuntime, vllm_version

    model, tok, cfg = loaded.model, loaded.tokenizer, args.eval_cfg
    hf_engine = lambda: HFEngine(model, tok, args.batch_size, args.max_length,  # noqa: E731
                                 memory_budget_gb=getattr(args, "memory_budget_gb", 0.0))
    bench.use_tokenizer(tok)   # the prompt format the run would resolve for this tokenizer
    plan = bench.eval_plan()
    dtype = vllm_dtype(cfg.vllm_dtype, model)
    out(f"bench: benchmark {bench.name}, model {loaded.name} ({loaded.source}), device {device}, limit {args.limit}, "
        f"HF fp32 with {torch.get_num_threads()} torch thread(s), vLLM {vllm_version()} {dtype}")

    run_plan(RoutedEngine(hf_engine()), _warm_plan(plan))
    started = time.perf_counter()
    hf = run_plan(RoutedEngine(hf_engine()), plan)
    hf.timings["total_s"] = time.perf_counter() - started
    hf_memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    own = runtime is None
    if own:
        runtime = VLLMRuntime(dtype, device.type, cfg.vllm_tensor_parallel, cfg.vllm_gpu_memory, cfg.vllm_kv_cache_gib,
                              log=lambda m: None)
    try:
        engine = RoutedEngine(VLLMEngine(runtime, model, tok, args.max_length, folder), hf_engine())
        started = time.perf_counter()
        run_plan(engine, _warm_plan(plan))   # starts vLLM
        start_s = time.perf_counter() - started
        engine.served = {"generation": {}, "logprobs": {}}
        started = time.perf_counter()
        vl = run_plan(engine, plan)
        vl.timings["total_s"] = time.perf_counter() - started
        switch = VLLMEngine(runtime, model, tok, args.max_length, None)   # the same weights, written to a new folder
        started = time.perf_counter()
        runtime.load(switch, switch.signature, switch._weights)
        switch_s = time.perf_counter() - started
        vllm_memory = child_peak_memory_mb()
        served = engine.served
        decoding = decoding_lines(runtime, model, tok, switch.prompt_ids(_first_prompt(plan)), dtype, device)
    finally:
        if own:
            runtime.close()

    tokens = plan_tokens(tok, plan, hf)
    same_text = hf.generations == vl.generations
    _, gap = compare(bench, hf, vl, None)
    cells = same_cells(type(bench), bench.score(hf, None).aggregates, bench.score(vl, None).aggregates)
    to_hf = served["logprobs"].get("hf", 0)
    out(f"requests: {hf.counts['generation_requests']} generations, {hf.counts['logprob_requests']} log-prob texts "
        f"({to_hf} of them need the full distribution and went to HF in the vLLM run); "
        f"{tokens['generated']} tokens generated, {tokens['scored']} tokens in scored texts")
    out("stage        |     hf s |  vllm s |    hf tok/s |  vllm tok/s | vllm vs hf")
    ratios = {}
    for stage, key, n in (("generation", "generation_s", tokens["generated"]), ("log-prob", "logprob_s", tokens["scored"]),
                          ("evaluation", "total_s", None)):
        a, b = hf.timings[key], vl.timings[key]
        ratios[stage] = a / b if b else 0.0
        rate = (lambda t: f"{n / t:11.1f}" if n and t else f"{'':>11}")  # noqa: E731
        out(f"{stage:<12} | {a:8.2f} | {b:7.2f} | {rate(a)} | {rate(b)} | {ratios[stage]:9.2f}x")
    threads = f"; OpenMP threads bound to cores {runtime.binding()}" if device.type == "cpu" else ""
    out(f"vLLM start-up (import + LLM()) and warm-up: {start_s:.1f} s; model switch (weights written, then reloaded in place): "
        f"{switch_s:.2f} s{threads}")
    out(f"peak memory: this process {hf_memory:.0f} MiB (HF engine and model); vLLM engine processes {vllm_memory:.0f} MiB")
    for line in decoding:
        out(line)
    pairs = [(x, y) for name in hf.generations for x, y in zip(hf.generations[name], vl.generations[name])]
    out(f"generations identical: {'yes' if same_text else 'no'} ({sum(x == y for x, y in pairs)}/{len(pairs)}); "
        f"largest aggregate difference: {gap:.2e}; "
        f"leaderboard cells identical: {'yes' if cells else 'no'}")
    out(f"vllm vs hf: generation {ratios['generation']:.2f}x, log-probs {ratios['log-prob']:.2f}x, evaluation "
        f"{ratios['evaluation']:.2f}x (scores identical at the precision shown: {'yes' if same_text and cells else 'no'})")
    return ratios["evaluation"]


def _first_prompt(plan: EvalPlan):
    return next(r.prompt for requests in plan.generations.values() for r in requests)


def decoding_lines(runtime, model, tokenizer, prompt_ids: list[int], vllm_dtype: str, device, steps: int = DECODE_STEPS) -> list[str]:
    """Each engine decoding ``steps`` tokens of one sequence after the plan's first prompt (EOS
    ignored, so every step runs), against the memory-bandwidth bound at the copy bandwidth measured
    on ``device``. The HF side is transformers' ``generate`` (the engine's own loop stops at EOS)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    bandwidth = copy_bandwidth(device)

    def vllm_generate(n: int) -> None:
        params = SamplingParams(temperature=0.0, max_tokens=n, min_tokens=n, ignore_eos=True, detokenize=False)
        runtime.llm.generate([TokensPrompt(prompt_token_ids=prompt_ids)], params, use_tqdm=False)

    ids = torch.tensor([prompt_ids], device=model.device)

    @torch.inference_mode()
    def hf_generate(n: int) -> None:
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                       do_sample=False, pad_token_id=tokenizer.pad_token_id)

    decoders = (("vLLM", vllm_generate, getattr(torch, vllm_dtype).itemsize),
                ("HF (transformers generate)", hf_generate, next(model.parameters()).element_size()))
    lines = [measure_decoding(generate, len(prompt_ids), steps, streamed_weight_bytes(model, size),
                              kv_bytes_per_token(model.config, size), bandwidth).line(name)
             for name, generate, size in decoders]
    head = (f"decoding one sequence ({len(prompt_ids)}-token prompt, {steps} steps) against the memory-bandwidth bound at "
            f"{bandwidth / 1e9:.1f} GB/s ({device.type} copy bandwidth, measured): ")
    return [head + "; ".join(lines)]
