"""A few GA steps under ``torch.distributed.run``: the two-process part of ``scripts/gpu-check``.

Every rank builds the same random-weight model on the device its launcher gives it and runs the
shared unlearning loop (data-parallel, or FSDP when ``ACCELERATE_USE_FSDP=true``); the main
process writes the step times and its peak memory as JSON. Not a test: started by
``harness.bench.gpu_check``, which reads the file or, if the launch failed, the error it printed.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook


def main(argv: list[str] | None = None) -> int:
    from harness.bench.report import peak_memory_mb, reset_peak_memory
    from harness.bench.workload import forget_examples
    from harness.registry import METHODS
    from harness.runtime.models import load_model
    from harness.training import distributed
    from harness.training.loop import TrainConfig, train

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    args = parser.parse_args(argv)

    ranks = distributed.current(torch.device(args.device))   # starts the process group
    device = ranks.device or torch.device(args.device)
    loaded = load_model(args.model, device)
    cfg = TrainConfig(lr=1e-5, max_steps=args.steps, global_batch=args.batch, micro_batch=max(1, args.batch // 2),
                      max_length=args.length, weight_decay=0.0)
    marks: list[float] = []

    def mark(optimiser, a, k):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        marks.append(time.perf_counter())

    hook = register_optimizer_step_post_hook(mark)
    reset_peak_memory(device)
    try:
        method = METHODS.get("ga")(METHODS.get("ga").Config())
        forget = forget_examples(args.batch * args.steps, args.length)
        result = train(loaded.model, loaded.tokenizer, method, forget, None, cfg, seed=0)
    finally:
        hook.remove()
    gaps = [b - a for a, b in zip(marks, marks[1:])]
    if ranks.is_main:
        args.out.write_text(json.dumps({
            "world_size": ranks.world_size, "sharded": ranks.sharded, "device": str(device),
            "steps": result.steps, "step_s": sorted(gaps)[len(gaps) // 2] if gaps else None,
            "peak_memory_mib": peak_memory_mb(device), "status": result.status,
        }))
    ranks.barrier()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
