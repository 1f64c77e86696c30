"""Trains GA, NPO, GradDiff (and GA with LoRA, not under FSDP) on the tiny model; run by test_scale_out.py, alone or under torchrun
(data-parallel, or FSDP with ACCELERATE_USE_FSDP=true).

Each rank writes which forget items (and which retain items) its micro-batches held, not counting
FSDP's weight-0 padding passes, and how many parameter elements it stores locally out of the whole;
the main process also writes the trained weights. Not a test module itself (no ``test_`` prefix).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from harness.training import distributed
from harness.data.batching import Example
from harness.methods.ga import GradientAscent
from harness.methods.graddiff import GradDiff
from harness.methods.npo import NPO
from harness.runtime.models import build_tiny_random
from harness.training.lora import LoraSettings
from harness.training.loop import TrainConfig, train

FORGET = [Example(f"Q{i}:", f" fact {i} is {'xyzw'[i % 4] * (1 + i % 3)}") for i in range(10)]
RETAIN = [Example(f"R{i}:", f" other {i}") for i in range(6)]
# 10 items in global batches of 4: steps of 2, 2 and 1 micro-batches (a rank sits the last one out).
CONFIG = TrainConfig(lr=1e-3, max_steps=3, global_batch=4, micro_batch=2, weight_decay=0.0)


def run_all(out: Path) -> None:
    ranks = distributed.current(torch.device("cpu"))
    seen: dict[str, dict[str, list]] = {}
    weights = {}
    for cls in (GradientAscent, NPO, GradDiff):
        log = seen.setdefault(cls.name, {"forget": [], "retain": [], "padding_passes": 0})

        class Recording(cls):
            def loss(self, model, batch, ctx, _log=log):
                if batch.padding:
                    _log["padding_passes"] += 1
                else:
                    _log["forget"] += batch.forget_index.tolist()
                    if batch.retain is not None:
                        _log["retain"] += batch.retain.input_ids.tolist()
                if "storage" not in _log:   # elements this rank holds (its shards) out of the model's total
                    params = list(model.parameters())
                    local = [p.to_local() if hasattr(p, "to_local") else p for p in params]
                    _log["storage"] = {"local": sum(t.numel() for t in local), "total": sum(p.numel() for p in params),
                                       "sharded": all(hasattr(p, "to_local") for p in params)}
                return super().loss(model, batch, ctx)

        model, tok = build_tiny_random()
        model = model.float()
        result = train(model, tok, Recording(), FORGET, RETAIN, CONFIG, seed=5)
        weights[cls.name] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        seen[cls.name]["losses"] = result.losses
    if not ranks.sharded:   # GA with LoRA adapters (train.lora; refused under FSDP)
        model, tok = build_tiny_random()
        model = model.float()
        result = train(model, tok, GradientAscent(), FORGET, RETAIN, CONFIG, seed=5, lora=LoraSettings(r=4, alpha=8.0))
        weights["ga_lora"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        seen["ga_lora"] = {"losses": result.losses}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"seen-rank{ranks.rank}.json").write_text(json.dumps(seen))
    if ranks.is_main:
        torch.save(weights, out / "weights.pt")


if __name__ == "__main__":
    torch.set_num_threads(1)
    run_all(Path(sys.argv[1]))
