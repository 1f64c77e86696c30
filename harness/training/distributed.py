"""One cell on several processes: what the training loop and the runner need to know of the other ranks.

Launched as ``accelerate launch --multi_gpu --num_processes N -m harness.cli run ...`` (or
``torchrun --nproc_per_node N -m harness.cli run ...``), every process runs the same plan;
``accelerate`` starts the process group (NCCL on GPUs, gloo on CPUs) and picks each rank's device.
A plain ``harness run`` never imports any of it: ``current()`` is then ``SINGLE``, whose
operations return their input untouched, so a single process computes exactly what it did before.

Why the result does not depend on the number of processes: the global batch of a step is cut
into micro-batches exactly as in one process (``train.micro_batch``), from one data order and one
retain pairing drawn with the run's seed. Micro-batch j goes to rank ``j % N``; each rank
back-propagates ``loss_j * len_j / len(global batch)`` over its own micro-batches, and the
gradients are *summed* over ranks, which is the single-process gradient (up to float summation
order). Losses, method logs and token counts are summed the same way, the divergence guard stops
every rank if any rank sees a bad loss, and only the main process evaluates and writes.

Gradients are summed with one all-reduce per step rather than through DDP's backward hooks:
a rank may hold no micro-batch in a short last step, and some methods call ``autograd.grad``
inside their loss (SGA's automatic r), neither of which DDP's hooks allow.

With ``accelerate launch --use_fsdp`` (``ACCELERATE_USE_FSDP=true``) the loop trains a sharded copy
instead (``ShardedProcesses``, FSDP2: see ``harness/training/sharding.py``). The arithmetic is the same; what
changes is that FSDP's gather and reduce-scatter run inside every forward and backward pass, so
all ranks must run the same passes: a rank short of a micro-batch in a step runs a padding pass
(a micro-batch of the step with weight 0, ``MethodBatch.padding``) and no rank stops a step early.
"""
from __future__ import annotations

import datetime
import contextlib
import os
from typing import Any

import torch

from harness.errors import HarnessError


class SingleProcess:
    """The default: one process, every operation the identity."""

    world_size, rank, is_main = 1, 0, True
    sharded = False    # True: the loop trains an FSDP-sharded copy, and ranks run their passes in lockstep

    def __init__(self, device: torch.device | None = None):
        self.device = device

    def my_share(self, items: list) -> list:
        """The items (micro-batches) this rank computes: all of them."""
        return list(items)

    def passes(self, n_micro: int) -> list[tuple[int, bool]]:
        """(micro-batch index, is padding) of the forward/backward passes this rank runs in a step."""
        return [(j, False) for j in self.my_share(range(n_micro))]

    def training_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the loop trains: ``model`` itself, or (FSDP) a sharded copy of it."""
        return model

    def sync_weights(self, trained: torch.nn.Module, model: torch.nn.Module) -> None:
        """Make ``model`` hold the trained weights (a no-op unless ``trained`` is a sharded copy)."""

    def broadcast_parameters(self, model: torch.nn.Module) -> None:
        pass

    def sum_gradients(self, model: torch.nn.Module) -> None:
        pass

    def sum_step(self, loss: float, logs: dict[str, float], finite: bool) -> tuple[float, dict[str, float], bool]:
        return loss, logs, finite

    def sum_int(self, value: int) -> int:
        return value

    def broadcast(self, obj: Any) -> Any:
        """``obj`` as the main process holds it."""
        return obj

    def barrier(self) -> None:
        pass


SINGLE = SingleProcess()


class MultiProcess(SingleProcess):
    """Several processes started by ``accelerate launch`` / ``torchrun`` (WORLD_SIZE > 1)."""

    def __init__(self, state):
        import torch.distributed as dist

        self.dist, self.state = dist, state
        self.world_size, self.rank = state.num_processes, state.process_index
        self.is_main = state.is_main_process
        self.device = state.device

    def my_share(self, items: list) -> list:
        return list(items)[self.rank :: self.world_size]

    def broadcast_parameters(self, model: torch.nn.Module) -> None:
        """Every rank starts from the main process's weights, as DDP does."""
        for tensor in list(model.parameters()) + list(model.buffers()):
            self.dist.broadcast(tensor.data, src=0)

    def sum_gradients(self, model: torch.nn.Module) -> None:
        """Sum every gradient over the ranks in one flat all-reduce (a rank without a micro-batch adds 0).

        A parameter no rank produced a gradient for keeps ``grad = None``, as in one process, so
        AdamW leaves it alone (no weight decay, no moment update).
        """
        params = [p for p in model.parameters() if p.requires_grad]
        has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=self._comm_device())
        self.dist.all_reduce(has_grad, op=self.dist.ReduceOp.MAX)
        params = [p for p, used in zip(params, has_grad.tolist()) if used]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if not params:
            return
        for dtype in {p.grad.dtype for p in params}:
            grads = [p.grad for p in params if p.grad.dtype == dtype]
            flat = torch.cat([g.reshape(-1) for g in grads])
            self.dist.all_reduce(flat, op=self.dist.ReduceOp.SUM)
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()

    def sum_step(self, loss, logs, finite):
        """The step's weighted loss and logs summed over ranks (rank order), and whether all were finite."""
        gathered: list = [None] * self.world_size
        self.dist.all_gather_object(gathered, (loss, logs, finite))
        total, merged = 0.0, {}
        for part_loss, part_logs, _ in gathered:
            total += part_loss
            for k, v in part_logs.items():
                merged[k] = merged.get(k, 0.0) + v
        return total, merged, all(f for _, _, f in gathered)

    def sum_int(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.long, device=self._comm_device())
        self.dist.all_reduce(t, op=self.dist.ReduceOp.SUM)
        return int(t.item())

    def broadcast(self, obj):
        box = [obj if self.is_main else None]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        self.dist.barrier()

    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


class ShardedProcesses(MultiProcess):
    """``accelerate launch --use_fsdp``: each rank stores and updates one shard of the trained model."""

    sharded = True

    def __init__(self, state, settings):
        super().__init__(state)
        from torch.distributed.device_mesh import init_device_mesh

        self.settings = settings
        self.mesh = init_device_mesh(self._comm_device().type, (self.world_size,))

    def passes(self, n_micro: int) -> list[tuple[int, bool]]:
        """This rank's micro-batches, padded to the same count on every rank with weight-0 passes.

        FSDP gathers weights in every forward and reduce-scatters in every backward, collectives that
        all ranks must join; the padding pass reruns micro-batch 0 of the step and adds 0 to the gradient.
        """
        mine = [(j, False) for j in self.my_share(range(n_micro))]
        return mine + [(0, True)] * (-(-n_micro // self.world_size) - len(mine))

    def training_model(self, model):
        from harness.training.sharding import shard_copy

        return shard_copy(model, self.mesh, self.settings)

    def sum_gradients(self, model) -> None:
        """Nothing left to do: FSDP's reduce-scatter already summed each shard's gradient over ranks."""

    def sync_weights(self, trained, model) -> None:
        from harness.training.sharding import gather_into

        gather_into(trained, model)


_CURRENT: SingleProcess | None = None


@contextlib.contextmanager
def this_process_only():
    """Within the block the loop trains on this process alone, whatever the launch.

    For work the main process does while the other ranks wait (the relearning attack on the
    weights it evaluates): a collective there would wait for ranks that never join it.
    """
    global _CURRENT
    saved = _CURRENT
    _CURRENT = SingleProcess(saved.device if saved is not None else None)
    try:
        yield
    finally:
        _CURRENT = saved


def launched_world_size() -> int:
    """Processes started by ``accelerate launch``/``torchrun`` (1 for a plain command)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def current(device: torch.device | None = None) -> SingleProcess:
    """This process's view of the run; the process group is started on the first call of a launched run.

    ``device`` is the device the user asked for (or the default); on GPUs each rank then gets its own.
    """
    global _CURRENT
    if _CURRENT is not None:
        return _CURRENT
    if launched_world_size() <= 1:
        return SingleProcess(device)
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        raise HarnessError(
            "DeepSpeed is not supported by the unlearning loop. For a model whose training state does not fit one "
            "device launch with FSDP (`accelerate launch --use_fsdp --num_processes N -m harness.cli run ...`), "
            "otherwise data-parallel (`accelerate launch --multi_gpu --num_processes N -m harness.cli run ...`)."
        )
    settings = None
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        from harness.training.sharding import FsdpSettings

        settings = FsdpSettings.from_env()   # refuses the options the harness does not implement, before any work
    from accelerate import PartialState

    cpu = device is not None and device.type == "cpu"
    # Evaluation runs on the main process alone while the others wait: give it hours, not minutes.
    state = PartialState(cpu=cpu, timeout=datetime.timedelta(hours=6))
    _CURRENT = MultiProcess(state) if settings is None else ShardedProcesses(state, settings)
    return _CURRENT
