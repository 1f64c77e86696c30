"""`harness bench`: how fast the evaluation and training stages run, against a naive baseline.

Figures, not a timed test. For one model and benchmark it runs the benchmark's evaluation plan
twice on the same weights and requests:

- shared: the harness's own evaluation (one generation stage and one log-prob stage, identical
  requests once, batches sorted by length, prompts shared by several continuations run once,
  the output head only at scored positions, no padding mask for right-padded whole texts,
  finished rows leaving a generation batch);
- naive: every metric on its own (each named request list once per metric that reads it, see
  ``EvalPlan.readers``), requests in the order given, fixed-size batches, whole texts with
  the padding mask and full logits, transformers' ``generate``; what a harness does when each
  metric runs its own forward passes. It keeps the same memory budget (``eval.memory_budget_gb``).

Both are scored by the benchmark; "scores identical" means every generation is the same string
and every aggregate agrees within 1e-6 (log-probs from different batch shapes differ by float
rounding). Peak memory is reported per stage (reset at the start of each), with the memory
budget and the number of scored positions per chunk; the shared generation stage is run once
more with transformers' ``generate`` to show what dropping finished rows buys. It then times
one optimiser step of each unlearning method and counts the forward passes of the policy and
of any reference model in that step (hooks on ``forward``). The last line reads
``speedup vs naive: X.XXx (scores identical: yes|no)``.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from harness.data.batching import encode
from harness.runtime import threads
from harness.engines.hf import HFEngine
from harness.engines.plan import EvalPlan, PlanOutputs, run_plan
from harness.registry import METHODS
from harness.training.loop import TrainConfig, train

TOLERANCE = 1e-6


def naive_engine(model, tokenizer, batch_size: int, max_length: int, memory_budget_gb: float = 0.0) -> HFEngine:
    """The baseline: no sorting or prompt sharing, full logits, transformers' ``generate``. It
    keeps the memory budget (chunked scoring, fewer rows for long texts): the machine it runs on
    has no more memory than the harness's own evaluation gets."""
    engine = HFEngine(model, tokenizer, batch_size, max_length, share_prompts=False, memory_budget_gb=memory_budget_gb)
    engine.sort_by_length = False
    engine.head_at_kept_positions = False
    engine.drop_finished = False
    engine.causal_only = False
    return engine


def run_plan_naive(engine: HFEngine, plan: EvalPlan) -> PlanOutputs:
    """Each metric's requests on their own: a list read by three metrics is run three times."""
    outputs: dict[str, dict[str, list]] = {"generations": {}, "logprobs": {}}
    timings = {"generation_s": 0.0, "logprob_s": 0.0}
    counts = {"generation_requests": 0, "logprob_requests": 0}
    for stage, run, unit in (("generations", engine.generate, "generation"), ("logprobs", engine.logprobs, "logprob")):
        for name, requests in getattr(plan, stage).items():
            for _ in plan.readers.get(name, (name,)):
                started = time.perf_counter()
                outputs[stage][name] = run(requests)
                timings[f"{unit}_s"] += time.perf_counter() - started
                counts[f"{unit}_requests"] += len(requests)
    return PlanOutputs(outputs["generations"], outputs["logprobs"], timings, counts)


def _unique(named: dict[str, list]) -> list:
    return list(dict.fromkeys(r for requests in named.values() for r in requests))


def plan_tokens(tokenizer, plan: EvalPlan, outputs: PlanOutputs) -> dict[str, int]:
    """Tokens of the unique requests: generated tokens, and prompt + continuation tokens scored."""
    generated = sum(
        len(tokenizer(text, add_special_tokens=False)["input_ids"])
        for name, texts in outputs.generations.items()
        for text in dict(zip(plan.generations[name], texts)).values()
    )
    scored = sum(
        len(encode(tokenizer, r.prompt, r.continuation, 10**9, r.add_eos)[0]) for r in _unique(plan.logprobs)
    )
    return {"generated": generated, "scored": scored}


def compare(bench, a: PlanOutputs, b: PlanOutputs, reference) -> tuple[bool, float]:
    """(identical, largest aggregate difference) of two evaluations of the same model."""
    same_text = a.generations == b.generations
    sa, sb = bench.score(a, reference).aggregates, bench.score(b, reference).aggregates
    gaps = [abs(sa[k] - sb[k]) for k in sa if k in sb and isinstance(sa[k], (int, float)) and math.isfinite(sa[k])]
    gap = max(gaps, default=0.0)
    return same_text and set(sa) == set(sb) and gap <= TOLERANCE, gap


def peak_memory_mb(device: torch.device) -> float:
    """Peak since the last ``reset_peak_memory``: the CUDA allocator's peak on GPU; on CPU the
    process's resident-set high-water mark (Linux ``VmHWM``, else ``ru_maxrss``, which never resets)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux reports KiB


def reset_peak_memory(device: torch.device) -> bool:
    """Start a new peak; False where the platform cannot (the figure is then the peak so far)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")   # Linux: reset the resident-set high-water mark
        return True
    except OSError:
        return False


class StagePeaks:
    """Wraps an engine: the peak memory of each stage (generation, log-prob) while it ran."""

    def __init__(self, engine, device: torch.device):
        self.engine, self.device, self.peaks = engine, device, {"generation": 0.0, "log-prob": 0.0}

    def _measure(self, stage: str, run, requests, progress):
        reset_peak_memory(self.device)
        try:
            return run(requests, progress)
        finally:
            self.peaks[stage] = max(self.peaks[stage], peak_memory_mb(self.device))

    def generate(self, requests, progress=None):
        return self._measure("generation", self.engine.generate, requests, progress)

    def logprobs(self, requests, progress=None):
        return self._measure("log-prob", self.engine.logprobs, requests, progress)


@dataclass
class StepFigures:
    method: str
    seconds: float                # the second optimiser step (the first pays one-off costs)
    tokens_per_s: float           # forget tokens of that step per second
    policy_forwards: int          # forward passes of the trained model in that step
    reference_forwards: int       # forward passes of a reference model in that step
    setup_reference_passes: int   # reference passes before training (fixed reference quantities)


class ForwardCounter:
    """Counts forward calls of a model and of deep copies of it (a reference model)."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.policy, self.reference = model, 0, 0
        # A plain function, not a bound method: deepcopy shares functions but would copy the
        # counter behind a bound method, so a copied model's calls would land in the copy.
        self.handle = model.register_forward_pre_hook(lambda module, args: self._count(module))

    def _count(self, module) -> None:
        if module is self.model:
            self.policy += 1
        else:  # copy.deepcopy of the model (a reference model) carries the hook along
            self.reference += 1

    def close(self):
        self.handle.remove()


def time_one_step(method_name: str, model, tokenizer, bench, train_cfg: TrainConfig, method_cfg, seed: int) -> StepFigures:
    """Two optimiser steps on a copy of ``model``; the figures of the second."""
    work = copy.deepcopy(model)
    counter = ForwardCounter(work)
    marks: list[tuple[float, int, int]] = []
    hook = register_optimizer_step_post_hook(
        lambda optimiser, args, kwargs: marks.append((time.perf_counter(), counter.policy, counter.reference))
    )
    try:
        cfg = dataclasses.replace(train_cfg, max_steps=2)
        method = METHODS.get(method_name)(method_cfg)
        bench.use_tokenizer(tokenizer)
        result = train(work, tokenizer, method, bench.forget_train(), bench.retain_train(), cfg, seed)
    finally:
        hook.remove()
        counter.close()
    if len(marks) < 2:
        raise RuntimeError(f"{method_name}: training stopped before two optimiser steps ({result.status}).")
    (t1, p1, r1), (t2, p2, r2) = marks[-2], marks[-1]   # the last two: a method may fine-tune a helper first
    tokens = result.tokens / max(1, result.steps)
    return StepFigures(method_name, t2 - t1, tokens / (t2 - t1), p2 - p1, r2 - r1, result.reference_forward_passes)


def evaluate_both(bench, model, tokenizer, batch_size: int, max_length: int, memory_budget_gb: float = 0.0,
                  device: torch.device | None = None):
    """The shared and the naive evaluation of one model, after a small warm-up; each output's
    ``peaks`` holds the peak memory (MiB) of its generation and log-prob stages."""
    device = device or next(model.parameters()).device
    bench.use_tokenizer(tokenizer)
    plan = bench.eval_plan()
    warm = EvalPlan(  # the first generate/forward call pays one-off set-up costs: keep them out of both
        generations={k: v[:2] for k, v in list(plan.generations.items())[:1]},
        logprobs={k: v[:2] for k, v in list(plan.logprobs.items())[:1]},
    )
    run_plan(HFEngine(model, tokenizer, batch_size, max_length, memory_budget_gb=memory_budget_gb), warm)
    engine = StagePeaks(HFEngine(model, tokenizer, batch_size, max_length, memory_budget_gb=memory_budget_gb), device)
    started = time.perf_counter()
    shared = run_plan(engine, plan)
    shared.timings["total_s"] = time.perf_counter() - started
    shared.peaks = engine.peaks
    engine = StagePeaks(naive_engine(model, tokenizer, batch_size, max_length, memory_budget_gb), device)
    started = time.perf_counter()
    naive = run_plan_naive(engine, plan)
    naive.timings["total_s"] = time.perf_counter() - started
    naive.peaks = engine.peaks
    return plan, shared, naive


def generation_without_dropping(model, tokenizer, plan: EvalPlan, batch_size: int, max_length: int,
                                memory_budget_gb: float) -> tuple[float, dict]:
    """The shared generation stage again with transformers' ``generate`` (finished rows keep
    decoding, the stop check decodes whole rows): (seconds, generations)."""
    engine = HFEngine(model, tokenizer, batch_size, max_length, memory_budget_gb=memory_budget_gb)
    engine.drop_finished = False
    started = time.perf_counter()
    out = run_plan(engine, EvalPlan(generations=plan.generations))
    return time.perf_counter() - started, out.generations


def report(bench, loaded, args, method_names, method_configs, device, out=print) -> float:
    """Print every figure; return the evaluation speedup (naive wall time / shared wall time)."""
    batch_size, max_length = args.batch_size, args.max_length
    budget_gb = getattr(args, "memory_budget_gb", 0.0)
    used = threads.describe()
    probe = HFEngine(loaded.model, loaded.tokenizer, batch_size, max_length, memory_budget_gb=budget_gb).describe()
    out(f"bench: benchmark {bench.name}, model {loaded.name} ({loaded.source}), device {device}, "
        f"limit {args.limit}, eval batch {batch_size}, torch threads {used['threads']} ({used['why']})")
    out(f"memory budget {probe['memory_budget_gb']:g} GiB (eval.memory_budget_gb), scored positions per chunk "
        f"{probe['position_chunk']}")
    plan, shared, naive = evaluate_both(bench, loaded.model, loaded.tokenizer, batch_size, max_length, budget_gb, device)
    tokens = plan_tokens(loaded.tokenizer, plan, shared)
    identical, gap = compare(bench, shared, naive, None)
    out(f"requests: {shared.counts['generation_requests']} generations, {shared.counts['logprob_requests']} log-prob texts "
        f"(naive runs {naive.counts['generation_requests']} and {naive.counts['logprob_requests']}); "
        f"{tokens['generated']} tokens generated, {tokens['scored']} tokens in scored texts")
    out("stage        | shared s | naive s | shared tok/s | naive tok/s | speedup | shared peak MiB | naive peak MiB")
    for stage, key, n in (("generation", "generation_s", tokens["generated"]), ("log-prob", "logprob_s", tokens["scored"])):
        a, b = shared.timings[key], naive.timings[key]
        out(f"{stage:<12} | {a:8.2f} | {b:7.2f} | {n / a if a else 0:12.1f} | {n / b if b else 0:11.1f} | "
            f"{b / a if a else 0:6.2f}x | {shared.peaks[stage]:15.0f} | {naive.peaks[stage]:14.0f}")
    out(f"largest aggregate difference shared vs naive: {gap:.2e}; generations identical: "
        f"{'yes' if shared.generations == naive.generations else 'no'}")
    out(f"peak memory of the evaluation stage: {max(shared.peaks.values()):.0f} MiB (naive baseline: "
        f"{max(naive.peaks.values()):.0f} MiB)")
    if plan.generations:
        seconds, texts = generation_without_dropping(loaded.model, loaded.tokenizer, plan, batch_size, max_length, budget_gb)
        a = shared.timings["generation_s"]
        out(f"generation with finished rows kept decoding (transformers generate): {seconds:.2f} s, "
            f"{seconds / a if a else 0:.2f}x the shared stage's time; same texts: {'yes' if texts == shared.generations else 'no'}")
    if method_names:
        reset_peak_memory(device)
        out("method       | step s | forget tok/s | policy fwd/step | reference fwd/step | reference passes before training")
        for name in method_names:
            train_cfg, method_cfg = method_configs(name)
            try:
                f = time_one_step(name, loaded.model, loaded.tokenizer, bench, train_cfg, method_cfg, args.seed)
            except Exception as exc:  # one method's failure must not hide the others' figures
                out(f"{name:<12} | failed: {type(exc).__name__}: {exc}")
                continue
            out(f"{name:<12} | {f.seconds:6.2f} | {f.tokens_per_s:12.1f} | {f.policy_forwards:15d} | "
                f"{f.reference_forwards:18d} | {f.setup_reference_passes}")
        out(f"peak memory of the training steps: {peak_memory_mb(device):.0f} MiB")
    speedup = naive.timings["total_s"] / shared.timings["total_s"]
    out(f"speedup vs naive: {speedup:.2f}x (scores identical: {'yes' if identical else 'no'})")
    return speedup
