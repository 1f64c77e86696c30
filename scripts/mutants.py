#!/usr/bin/env python3
"""Mutation check: does the suite notice when the scoring, the losses, the engine's moments, the
cache key, the training loop, FSDP sharding, the executors, claims, devices or cell identity are wrong?

Each mutant below is one deliberate, plausible break (one text replacement in one file). For each,
the repository's source and tests are copied to a temporary folder, the break is made there, and
only the test files that cover that code run (``pytest -x -q``). A mutant is *killed* when a test
fails, *survives* when all pass. The checkout is never touched. Exit status 1 if any survives.

    python scripts/mutants.py            # all mutants (about 5-10 minutes on 2 cores)
    python scripts/mutants.py -k kl      # those whose name contains "kl"
    python scripts/mutants.py --list
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COPIED = ("harness", "methods", "benchmarks", "leaderboard", "tests", "pyproject.toml", "README.md", "docs")


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTANTS = [
    # losses
    Mutant("kl-direction-swapped", "harness/training/losses.py",
           "F.kl_div(logq, logp_ref, log_target=True", "F.kl_div(logp_ref, logq, log_target=True", ("tests/test_methods.py",)),
    Mutant("kl-sum-not-mean", "harness/training/losses.py",
           'log_target=True, reduction="batchmean"', 'log_target=True, reduction="sum"', ("tests/test_methods.py",)),
    Mutant("ce-without-answer-mask", "harness/training/losses.py",
           "return F.cross_entropy(logits[mask].float(), labels[mask])",
           "return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())", ("tests/test_methods.py",)),
    Mutant("sequence-logprob-mean", "harness/training/losses.py",
           "return logp.sum(-1)\n", "return logp.mean(-1)\n", ("tests/test_methods.py",)),
    # engine moments (Min-K%++)
    Mutant("engine-variance-for-sigma", "harness/engines/hf.py",
           "- mu.square()).clamp(min=0).sqrt()", "- mu.square()).clamp(min=0)", ("tests/test_engine.py",)),
    Mutant("engine-mu-sign", "harness/engines/hf.py",
           "mu = (probs * rows).sum(-1)", "mu = -(probs * rows).sum(-1)", ("tests/test_engine.py",)),
    # cache key
    Mutant("cache-key-text-only", "harness/engines/cache.py",
           "return kind + json.dumps(fields, sort_keys=True)",
           "return kind + json.dumps([str(request.prompt), getattr(request, 'continuation', '')])",
           ("tests/test_evalcache.py",)),
    Mutant("cache-key-ignores-add-eos", "harness/engines/cache.py",
           "json.dumps(fields, sort_keys=True)",
           "json.dumps({k: v for k, v in fields.items() if k != 'add_eos'}, sort_keys=True)",
           ("tests/test_evalcache.py",)),
    Mutant("cache-key-drops-grad-norm", "harness/engines/cache.py",
           'if kind == "logprob" and not fields["grad_norm"]:', 'if kind == "logprob":', ("tests/test_evalcache.py",)),
    Mutant("cache-key-ignores-threads", "harness/engines/hf.py",
           "            **threads.identity(self.device),\n", "", ("tests/test_evalcache.py",)),
    # decoding (MUSE clean-up)
    Mutant("cleanup-keeps-space-before-comma", "harness/data/cleanup.py", '(" ,", ","), ', "", ("tests/test_engine.py",)),
    Mutant("cleanup-ignored", "harness/engines/base.py",
           "        if request.clean_up_spaces:\n            text = clean_up_tokenization_spaces(text)\n", "",
           ("tests/test_engine.py",)),
    # scoring
    Mutant("min-k-rounds-up", "harness/scoring/privacy.py",
           "n = max(1, int(len(values) * k))", "n = max(1, -int(-len(values) * k // 1))", ("tests/test_scoring.py",)),
    Mutant("min-k-pp-no-mu", "harness/scoring/privacy.py", "z = (lp - m) /", "z = lp /", ("tests/test_scoring.py",)),
    Mutant("truth-ratio-inverted", "harness/scoring/probability.py",
           "return float(np.exp(log_pert - _mean_logprob(paraphrased_logprobs)))",
           "return float(np.exp(_mean_logprob(paraphrased_logprobs) - log_pert))", ("tests/test_scoring.py",)),
    Mutant("truth-ratio-forget-max", "harness/scoring/probability.py",
           "vals = np.where(arr <= 1.0, arr, 1.0 / arr)", "vals = np.where(arr >= 1.0, arr, 1.0 / arr)",
           ("tests/test_scoring.py",)),
    Mutant("muse-auc-labels-swapped", "harness/scoring/privacy.py",
           'return _auc(holdout_scores, forget_scores, "MUSE AUC")', 'return _auc(forget_scores, holdout_scores, "MUSE AUC")',
           ("tests/test_scoring.py",)),
    Mutant("rouge-without-stemmer", "harness/scoring/text.py",
           "def rouge_l_recall(prediction: str, reference: str, use_stemmer: bool = True)",
           "def rouge_l_recall(prediction: str, reference: str, use_stemmer: bool = False)", ("tests/test_scoring.py",)),
    # robustness table
    Mutant("robustness-cell-swapped", "leaderboard/robustness.py",
           'f"{fmt(c, line.before)} → {fmt(c, line.after)}"', 'f"{fmt(c, line.after)} → {fmt(c, line.before)}"',
           ("tests/test_robustness.py",)),
    # training loop
    Mutant("no-gradient-clipping", "harness/training/loop.py",
           "if cfg.max_grad_norm > 0:", "if False:", ("tests/test_training.py",)),
    Mutant("no-warmup", "harness/training/loop.py",
           "warmup = int(round(cfg.warmup_ratio * total))", "warmup = 0", ("tests/test_training.py",)),
    Mutant("length-batches-not-shuffled", "harness/training/loop.py",
           "return [i for b in torch.randperm(len(batches), generator=rng).tolist() for i in batches[b]]",
           "return [i for b in batches for i in b]", ("tests/test_training.py",)),
    Mutant("epoch-order-unshuffled", "harness/training/loop.py",
           "    if not group_by_length:\n        return order\n", "    if not group_by_length:\n        return sorted(order)\n",
           ("tests/test_training.py",)),
    # FSDP sharding
    Mutant("shard-units-without-whole-model", "harness/training/sharding.py",
           "and m is not model] + [model]", "and m is not model]", ("tests/test_sharding.py",)),
    Mutant("shard-units-whole-model-only", "harness/training/sharding.py",
           'names = set(getattr(model, "_no_split_modules", None) or ())', "names = set()", ("tests/test_sharding.py",)),
    Mutant("gather-local-shard-only", "harness/training/sharding.py",
           'full = param.full_tensor() if hasattr(param, "full_tensor") else param',
           'full = param.to_local() if hasattr(param, "to_local") else param', ("tests/test_sharding.py",)),
    Mutant("gather-rebinds-not-copies", "harness/training/sharding.py",
           "target[name].copy_(full.to(target[name].device))", "target[name] = full.to(target[name].device)",
           ("tests/test_sharding.py",)),
    # executors and claims
    Mutant("executor-no-retain-stage", "harness/run/executors.py",
           'first = [n for n in names if n == "retain"]', 'first = []', ("tests/test_executors.py",)),
    Mutant("executor-failures-dropped", "harness/run/executors.py",
           'summary.failed += r.get("failed", [])', "pass", ("tests/test_executors.py",)),
    Mutant("executor-task-ignores-driver-threads", "harness/run/runner.py",
           "if req.threads is not None and req.threads != torch.get_num_threads():", "if False:",
           ("tests/test_executors.py",)),
    Mutant("claim-pid-checked-on-other-hosts", "harness/run/claims.py",
           'if info.get("host") == socket.gethostname() and', 'if info.get("host") != socket.gethostname() and',
           ("tests/test_claims.py",)),
    Mutant("claim-heartbeat-ignored", "harness/run/claims.py",
           'return now - float(info.get("heartbeat", 0)) > stale_after_s()', "return False", ("tests/test_claims.py",)),
    # devices
    Mutant("device-default-always-cpu", "harness/runtime/models.py",
           'return torch.device("cuda" if torch.cuda.is_available() else "cpu")', 'return torch.device("cpu")',
           ("tests/test_devices.py",)),
    Mutant("device-index-off-by-one", "harness/runtime/models.py",
           "device.index >= torch.cuda.device_count()", "device.index > torch.cuda.device_count()",
           ("tests/test_devices.py",)),
    # the thread count in a cell's identity (issue 29)
    Mutant("cell-identity-ignores-threads", "harness/run/runner.py",
           '"eval": evaluation, **attacks, **threads.identity(self.device),', '"eval": evaluation, **attacks,',
           ("tests/test_threads.py",)),
    Mutant("prepared-key-ignores-threads", "harness/run/prepare.py",
           '"code": finetune_code(), **threads.identity(device)}', '"code": finetune_code()}', ("tests/test_threads.py",)),
    # synthetic benchmark
    Mutant("bio-split-moved", "benchmarks/synthetic.py",
           "half = len(words) // 2", "half = len(words) // 2 + 1", ("tests/test_synthetic_benchmark.py",)),
]


def copy_repo(dest: Path) -> None:
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache")
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=skip)
        elif src.exists():
            shutil.copy(src, dest / name)


def run(mutant: Mutant, work: Path) -> tuple[str, float]:
    """'killed', 'survived' or 'not applied' (the text to replace is gone: the list needs updating)."""
    target = work / mutant.path
    original = target.read_text()
    if original.count(mutant.old) != 1:
        return "not applied", 0.0
    target.write_text(original.replace(mutant.old, mutant.new))
    env = {**os.environ, "PYTHONPATH": str(work), "PYTHONDONTWRITEBYTECODE": "1"}
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutant.tests],
                              cwd=work, env=env, capture_output=True, text=True)
    finally:
        target.write_text(original)
    return ("killed" if proc.returncode != 0 else "survived"), time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", default="", help="only mutants whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if args.k in m.name]
    if args.list:
        for m in chosen:
            print(f"{m.name:36} {m.path}  ->  {' '.join(m.tests)}")
        return 0
    outcomes = {}
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        work = Path(tmp)
        copy_repo(work)
        for m in chosen:
            outcome, seconds = run(m, work)
            outcomes[m.name] = outcome
            print(f"{outcome:12} {m.name:36} {seconds:6.1f} s", flush=True)
    killed = sum(o == "killed" for o in outcomes.values())
    print(f"\n{len(outcomes)} mutants, {killed} killed, "
          f"{sum(o == 'survived' for o in outcomes.values())} survived, "
          f"{sum(o == 'not applied' for o in outcomes.values())} not applied")
    return 0 if killed == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
