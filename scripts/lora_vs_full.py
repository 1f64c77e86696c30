#!/usr/bin/env python3
"""LoRA against full fine-tuning, method by method: training seconds and peak memory.

Figures, not a test. Each (method, mode) pair trains in a process of its own, started from the
prepared target model (prepared once, or taken from ``$HARNESS_CACHE``), so that a peak resident-set
size belongs to one training alone and not to whatever ran before it in the same process. The two
modes of one method run one after the other with the same thread count, so their ratio is the
figure to quote on a shared machine. The learning rate and every other setting are the method's
defaults unless ``--set`` says otherwise (LoRA usually wants a larger one: docs/scaling.md).

    python scripts/lora_vs_full.py --benchmark synthetic --limit 4 --threads 1 [--methods ga,npo]
        [--lora-r 8] [--lora-alpha 16] [--set KEY=VALUE ...]

Each line: method, training seconds full / LoRA and their ratio, peak resident set during the
training, full / LoRA (MiB, the Linux high-water mark reset just before training), and the training
status of each. The JSON line of each child also carries the number of parameters the optimiser
updated (adapters only under LoRA).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _request(args, method: str, lora: bool):
    from harness.run.config import parse_set
    from harness.run.runner import RunRequest

    overrides = parse_set(args.overrides)
    if lora:
        overrides.update({"train.lora.r": str(args.lora_r), "train.lora.alpha": str(args.lora_alpha)})
    return RunRequest(benchmark=args.benchmark, methods=method, model=args.model, data_dir=args.data_dir,
                      limit=args.limit, overrides=overrides, results_dir=None, save_models=False,
                      threads=args.threads, seed=args.seed)


def child(args) -> dict:
    """One training in this process; prints its figures as one JSON line."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from harness.bench.report import peak_memory_mb, reset_peak_memory
    from harness.registry import METHODS
    from harness.run.runner import Runner
    from harness.runtime.models import load_model
    from harness.training.loop import train

    runner = Runner(_request(args, args.child, args.mode == "lora"), None, lambda *a, **k: None)
    target, _ = runner.reference_models()
    loaded = load_model(target, runner.device, False)
    runner.bench.use_tokenizer(loaded.tokenizer)
    train_cfg, method_cfg = runner.method_configs(args.child)
    reset_peak_memory(runner.device)
    trained: list[int] = []   # parameters the optimiser updates, read at its first step: adapters only under LoRA
    hook = register_optimizer_step_post_hook(lambda optimiser, a, k: trained or trained.append(
        sum(p.numel() for group in optimiser.param_groups for p in group["params"])))
    result = train(loaded.model, loaded.tokenizer, METHODS.get(args.child)(method_cfg), runner.bench.forget_train(),
                   runner.bench.retain_train(), train_cfg, args.seed, lora=runner.lora_settings(args.child))
    hook.remove()
    return {"method": args.child, "mode": args.mode, "seconds": round(result.seconds, 2), "status": result.status,
            "steps": result.steps, "peak_mib": round(peak_memory_mb(runner.device)),
            "threads": torch.get_num_threads(), "trained_parameters": trained[0] if trained else 0}


def measure(args, method: str, mode: str) -> dict:
    command = [sys.executable, __file__, "--child", method, "--mode", mode, *args.passthrough]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"method": method, "mode": mode, "status": f"failed: {done.stderr.strip().splitlines()[-1:]}"}
    return json.loads(lines[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", default="synthetic")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default="all")
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lora-alpha", type=float, default=16)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("full", "lora"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return 0
    from harness.run.runner import resolve_methods

    args.passthrough = list(argv if argv is not None else sys.argv[1:])
    print(f"{args.benchmark}, {args.model}, --limit {args.limit}, {args.threads} thread(s), LoRA r={args.lora_r} "
          f"alpha={args.lora_alpha:g}; each training alone in its own process, full then LoRA")
    print(f"{'method':12} {'train s full':>12} {'LoRA':>8} {'ratio':>6} {'peak MiB full':>14} {'LoRA':>7} "
          "status")
    for method in resolve_methods(args.methods):
        full, lora = measure(args, method, "full"), measure(args, method, "lora")
        if "seconds" not in full or "seconds" not in lora:
            print(f"{method:12} {full['status']} | {lora['status']}", flush=True)
            continue
        print(f"{method:12} {full['seconds']:12.1f} {lora['seconds']:8.1f} {lora['seconds'] / full['seconds']:6.2f} "
              f"{full['peak_mib']:14d} {lora['peak_mib']:7d}  {full['status']}/{lora['status']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
