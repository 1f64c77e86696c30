"""FSDP's pieces by name: which modules are sharded (``shard_units``) and how the full weights come back
(``gather_into``), checked against hand-built expectations; 2 real ranks on gloo for the gather."""
from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from harness.runtime.models import build_tiny_random
from harness.training.sharding import gather_into, shard_units

REPO = Path(__file__).resolve().parent.parent


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Linear(2, 2)


class Stack(torch.nn.Module):
    _no_split_modules = ["Block"]

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(4, 2)
        self.blocks = torch.nn.ModuleList([Block(), Block(), Block()])
        self.head = torch.nn.Linear(2, 4)


def test_shard_units_are_the_decoder_layers_in_order_then_the_whole_model():
    stack = Stack()
    units = shard_units(stack)
    assert [id(u) for u in units] == [id(stack.blocks[0]), id(stack.blocks[1]), id(stack.blocks[2]), id(stack)]
    plain = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))   # no _no_split_modules: one unit
    assert shard_units(plain) == [plain]
    model = build_tiny_random()[0]
    assert set(model._no_split_modules) == {"LlamaDecoderLayer"}
    layers = list(model.model.layers)
    assert len(layers) >= 2
    assert [id(u) for u in shard_units(model)] == [id(layer) for layer in layers] + [id(model)]


def test_gather_into_writes_every_weight_into_the_callers_model_in_place():
    model = build_tiny_random()[0].float()
    work = copy.deepcopy(model)
    with torch.no_grad():
        for i, p in enumerate(work.parameters()):
            p.copy_(torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape) * 1e-3 + i)   # a different value everywhere
    same_objects = {name: (p, p.data_ptr()) for name, p in model.named_parameters()}
    gather_into(work, model)
    for name, p in model.named_parameters():
        assert p is same_objects[name][0] and p.data_ptr() == same_objects[name][1]   # the caller's tensors, updated
        assert torch.equal(p, dict(work.named_parameters())[name]), name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_each_hold_a_part_and_gather_back_the_whole(tmp_path):
    """Each rank adds 1 to the elements it holds; after the gather the model is the original + 1 exactly."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(REPO / "tests" / "sharding_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    total = ranks[0]["total"]
    assert sum(r["held"] for r in ranks) == total and all(0 < r["held"] < total for r in ranks)
    for r in ranks:
        assert r["world"] == 2 and r["all_sharded"]
        assert r["untouched_before_gather"] == 0.0   # sharding copied the model; the caller's weights stayed
        assert r["deviation"] == 0.0
