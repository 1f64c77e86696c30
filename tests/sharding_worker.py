"""Shards the tiny model over the ranks of a torchrun launch and gathers it back; run by test_sharding.py.

Every rank adds 1 to each element it holds of the sharded copy, then ``gather_into`` writes the
full weights into an ordinary model: if the gather is right, that model equals the original
weights plus 1 everywhere (no element missed, none taken twice, each in its place). Each rank
writes how many elements it held and the largest deviation from that expectation. Not a test
module itself (no ``test_`` prefix).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from harness.runtime.models import build_tiny_random
from harness.training.sharding import FsdpSettings, gather_into, shard_copy


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    model = build_tiny_random()[0].float()
    original = {name: p.detach().clone() for name, p in model.named_parameters()}
    expected = {name: p + 1.0 for name, p in original.items()}
    work = shard_copy(model, mesh, FsdpSettings())
    held = 0
    with torch.no_grad():
        for p in work.parameters():
            local = p.to_local()
            local.add_(1.0)
            held += local.numel()
    untouched = max((p - original[n]).abs().max().item() for n, p in model.named_parameters())
    gather_into(work, model)
    deviation = max((p - expected[n]).abs().max().item() for n, p in model.named_parameters())
    (out / f"rank{rank}.json").write_text(json.dumps({
        "world": world, "held": held, "total": sum(p.numel() for p in model.parameters()),
        "all_sharded": all(hasattr(p, "to_local") for p in work.parameters()),
        "untouched_before_gather": untouched, "deviation": deviation}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
