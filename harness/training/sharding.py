"""FSDP for the shared loop: a sharded copy of the model trains, the full weights come back at the end.

Used when a cell is launched with ``accelerate launch --use_fsdp ...`` (``ACCELERATE_USE_FSDP=true``).
PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``) cuts every decoder layer and the rest of
the model (embeddings, final norm, head) into one shard per rank: each rank stores, and the
optimiser updates, only its part of the parameters, gradients and AdamW moments. A forward pass
gathers a layer's full weights just before it runs and frees them after; a backward pass
reduce-scatters the gradient so each rank receives the sum over ranks of its own part.

Why the result equals one process's: the loop weights each micro-batch's loss by its share of the
global batch, so the step's gradient is the *sum* of the ranks' gradients. FSDP divides by the
number of ranks unless told otherwise; every sharded module is set to divide by 1 and to reduce
with a plain sum (gloo has no pre-multiplied sum), exactly what the data-parallel path's
all-reduce does.

The caller's model is never wrapped: FSDP shards a copy, and ``gather_into`` writes the trained
full weights back into the caller's model on every rank, one parameter at a time, so the runner
evaluates and saves an ordinary ``transformers`` model.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch

from harness.errors import HarnessError


@dataclass(frozen=True)
class FsdpSettings:
    """What of ``accelerate launch``'s FSDP options the harness honours; the rest it refuses, never ignores."""

    reshard_after_forward: bool = True   # FULL_SHARD (free gathered weights after forward) vs SHARD_GRAD_OP

    @classmethod
    def from_env(cls) -> "FsdpSettings":
        env = os.environ
        strategy = env.get("FSDP_SHARDING_STRATEGY", "FULL_SHARD").strip().upper()
        names = {"1": "FULL_SHARD", "2": "SHARD_GRAD_OP", "3": "NO_SHARD", "4": "HYBRID_SHARD", "5": "HYBRID_SHARD_ZERO2"}
        strategy = names.get(strategy, strategy)
        if strategy not in ("FULL_SHARD", "SHARD_GRAD_OP"):
            raise HarnessError(
                f"FSDP sharding strategy {strategy} is not supported by the harness; use FULL_SHARD or SHARD_GRAD_OP "
                "(`--fsdp_sharding_strategy FULL_SHARD`), or a data-parallel launch (`--multi_gpu`) for NO_SHARD."
            )
        for var, what in (("FSDP_OFFLOAD_PARAMS", "parameter offloading (--fsdp_offload_params)"),
                          ("FSDP_ACTIVATION_CHECKPOINTING", "activation checkpointing (--fsdp_activation_checkpointing)")):
            if env.get(var, "false").strip().lower() == "true":
                raise HarnessError(f"FSDP {what} is not supported by the harness; launch without it.")
        reshard = env.get("FSDP_RESHARD_AFTER_FORWARD", "true").strip().lower() != "false"
        return cls(reshard_after_forward=reshard and strategy == "FULL_SHARD")


def shard_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules sharded one by one: the decoder layers (``_no_split_modules``), then the whole model."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in names and m is not model] + [model]


def shard_copy(model: torch.nn.Module, mesh, settings: FsdpSettings) -> torch.nn.Module:
    """A copy of ``model`` sharded over ``mesh``, its gradients summed (not averaged) over ranks."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    work = copy.deepcopy(model)
    for unit in shard_units(work):
        fully_shard(unit, mesh=mesh, reshard_after_forward=settings.reshard_after_forward)
    for module in work.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    return work


@torch.no_grad()
def gather_into(work: torch.nn.Module, model: torch.nn.Module) -> None:
    """Copy the sharded copy's full weights into ``model`` (a collective: every rank calls it)."""
    target = dict(model.named_parameters())
    for name, param in work.named_parameters():
        full = param.full_tensor() if hasattr(param, "full_tensor") else param
        target[name].copy_(full.to(target[name].device))
