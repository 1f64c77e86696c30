"""One evaluation pass per model: gather every request of a benchmark, run each stage once.

A benchmark declares named request lists (its plan); all generation requests go through the
engine in one generation stage and all teacher-forced requests in one log-prob stage, with
identical requests computed once, so metrics that read the same quantity share the pass.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from harness.engines.base import GenerationRequest, LogprobRequest, TokenScores


@dataclass
class EvalPlan:
    generations: dict[str, list[GenerationRequest]] = field(default_factory=dict)
    logprobs: dict[str, list[LogprobRequest]] = field(default_factory=dict)
    # The metrics that read each named list (default: one, the list's name). Only the naive
    # baseline of `harness bench` uses it, to run every metric's requests on their own.
    readers: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass
class PlanOutputs:
    generations: dict[str, list[str]]
    logprobs: dict[str, list[TokenScores]]
    timings: dict[str, float]
    counts: dict[str, int]


def _run_stage(named: dict[str, list], execute) -> tuple[dict[str, list], int]:
    unique: dict = {}
    for requests in named.values():
        for r in requests:
            unique.setdefault(r, len(unique))
    answers = execute(list(unique)) if unique else []
    return {name: [answers[unique[r]] for r in requests] for name, requests in named.items()}, len(unique)


def run_plan(engine, plan: EvalPlan, progress=None) -> PlanOutputs:
    t0 = time.perf_counter()
    generations, n_gen = _run_stage(plan.generations, lambda reqs: engine.generate(reqs, progress))
    t1 = time.perf_counter()
    logprobs, n_lp = _run_stage(plan.logprobs, lambda reqs: engine.logprobs(reqs, progress))
    t2 = time.perf_counter()
    return PlanOutputs(
        generations,
        logprobs,
        {"generation_s": round(t1 - t0, 3), "logprob_s": round(t2 - t1, 3)},
        {"generation_requests": n_gen, "logprob_requests": n_lp},
    )
