"""`harness bench`: the naive baseline gives the same scores, forward passes are counted, last line is scriptable."""
import re

from harness.bench.report import ForwardCounter, compare, naive_engine, run_plan_naive, time_one_step
from harness.cli import main
from harness.engines.plan import run_plan
from harness.engines.hf import HFEngine
from harness.registry import BENCHMARKS
from harness.training.loop import TrainConfig


def test_naive_baseline_runs_each_metric_alone_and_scores_the_same(tiny):
    model, tok = tiny
    bench = BENCHMARKS.get("synthetic")(limit=2)
    plan = bench.eval_plan()
    shared = run_plan(HFEngine(model, tok), plan)
    naive = run_plan_naive(naive_engine(model, tok, 4, 2048), plan)
    # The answer lists are read by two metrics each, so the naive run scores them twice.
    extra = sum(len(plan.logprobs[name]) * (len(readers) - 1) for name, readers in plan.readers.items())
    assert extra == 2 + 2   # answer_forget and answer_retain: two items each, read twice
    assert naive.counts["logprob_requests"] == sum(len(v) for v in plan.logprobs.values()) + extra
    identical, gap = compare(bench, shared, naive, None)
    assert identical and gap <= 1e-6


def test_npo_spends_no_reference_pass_per_step_and_graddiff_two_policy_passes(tiny):
    model, tok = tiny
    bench = BENCHMARKS.get("synthetic")(limit=2)
    cfg = TrainConfig(lr=1e-4, global_batch=4, micro_batch=4)
    from harness.registry import METHODS

    npo = time_one_step("npo", model, tok, bench, cfg, METHODS.get("npo").Config(), 0)
    assert (npo.policy_forwards, npo.reference_forwards) == (1, 0)
    assert npo.setup_reference_passes == 1          # log pi_ref of the 4 forget texts, one micro-batch of 4, before training
    kl = time_one_step("npo", model, tok, bench, cfg, METHODS.get("npo").Config(retain_loss="kl"), 0)
    assert kl.reference_forwards == 1               # the KL retain term needs a live reference on retain batches
    graddiff = time_one_step("graddiff", model, tok, bench, cfg, METHODS.get("graddiff").Config(), 0)
    assert (graddiff.policy_forwards, graddiff.reference_forwards) == (2, 0)


def test_forward_counter_tells_policy_from_its_copies(tiny):
    import copy

    import torch

    model, _ = tiny
    counter = ForwardCounter(model)
    reference = copy.deepcopy(model)
    ids = torch.tensor([[1, 2, 3]])
    model(input_ids=ids)
    reference(input_ids=ids)
    reference(input_ids=ids)
    counter.close()
    model(input_ids=ids)
    assert (counter.policy, counter.reference) == (1, 2)


def test_bench_command_prints_figures_and_a_scriptable_last_line(capsys):
    assert main(["bench", "--benchmark", "synthetic", "--model", "tiny-random", "--limit", "2", "--methods", "ga,npo",
                 "--set", "train.global_batch=4", "--set", "train.micro_batch=4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"speedup vs naive: \d+\.\d\dx \(scores identical: (yes|no)\)", lines[-1])
    assert lines[-1].endswith("(scores identical: yes)")
    text = "\n".join(lines)
    assert re.search(r"^generation\s+\|\s+[\d.]+ \|", text, re.M) and re.search(r"^log-prob\s+\|", text, re.M)
    assert re.search(r"^npo\s+\|\s+[\d.]+ \|\s+[\d.]+ \|\s+1 \|\s+0 \|", text, re.M)
    assert "peak memory of the training steps" in text
    # Per-stage peak memory (reset at each stage), the budget and chunk size, the thread count and why.
    assert re.search(r"^log-prob\s+\|.*\|\s+\d+ \|\s+\d+$", text, re.M)
    assert re.search(r"^peak memory of the evaluation stage: \d+ MiB \(naive baseline: \d+ MiB\)$", text, re.M)
    assert re.search(r"memory budget 1\.5 GiB \(eval\.memory_budget_gb\), scored positions per chunk \d+", text)
    assert re.search(r"torch threads 1 \(OMP_NUM_THREADS\)", text)
    assert "same texts: yes" in text
