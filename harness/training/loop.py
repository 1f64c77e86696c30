"""The shared unlearning (and fine-tuning) loop.

AdamW with warm-up and a linear or constant schedule, gradient accumulation to a fixed
global batch (so results do not depend on how many examples fit in memory), seeded data
order, per-step loss logging, and a guard that stops a run whose loss is NaN or infinite, or has
grown ``divergence_growth`` times beyond its own first loss (harness/training/divergence.py), and
reports it as diverged instead of crashing the whole run.

Which settings a run gets is decided above the loop: a method may declare the loop settings its
paper uses (``UnlearningMethod.loop_settings``), and the runner resolves them with the benchmark's
defaults and the user's ``--set`` into the ``TrainConfig`` handed here.
"""
from __future__ import annotations

import copy
import math
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR

from harness.training import distributed
from harness.training.divergence import DivergenceGuard
from harness.data.batching import IGNORE, Example, make_batch
from harness.data.batching import encode as encode_example
from harness.data.chat import prompt_text
from harness.errors import HarnessError
from harness.training.finetune import Finetune
from harness.training.losses import sequence_logprob
from harness.training.lora import LoraSettings, adapted, merged_copy
from harness.methods.base import (
    NEEDS_REFERENCE_LOGPROBS,
    NEEDS_REFERENCE_MODEL,
    NEEDS_RETAIN,
    MethodBatch,
    MethodContext,
    UnlearningMethod,
)


@dataclass
class TrainConfig:
    lr: float = 1e-5
    epochs: int = 5
    max_steps: int = 0             # > 0 caps the number of optimiser steps (overrides epochs)
    global_batch: int = 32         # examples per optimiser step, fixed whatever fits in memory
    micro_batch: int = 8           # examples per forward pass; accumulation makes up the rest
    warmup_ratio: float = 0.0      # fraction of the steps spent warming up linearly
    schedule: str = "linear"       # "linear" decay after warm-up, or "constant"
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0     # 0 disables clipping
    max_length: int = 512          # tokens per example
    divergence_growth: float = 1000.0   # a loss beyond this many times the run's first loss (at least 1) counts
                                        # as diverged; 0 = only NaN/inf (harness/training/divergence.py)
    group_by_length: bool = True   # batch examples of similar length together (less padding)

    def __post_init__(self):
        if self.schedule not in ("linear", "constant"):
            raise HarnessError(f"train.schedule must be 'linear' or 'constant', got '{self.schedule}'.")
        if self.global_batch < 1 or self.micro_batch < 1:
            raise HarnessError("train.global_batch and train.micro_batch must be at least 1.")
        if self.epochs < 1 and self.max_steps < 1:
            raise HarnessError("set train.epochs >= 1 or train.max_steps >= 1.")


@dataclass
class TrainResult:
    status: str = "ok"                     # "ok" or "diverged"
    steps: int = 0
    losses: list[float] = field(default_factory=list)   # one per optimiser step
    logs: list[dict] = field(default_factory=list)      # method logs, one per step
    diverged_at_step: int | None = None
    diverged_because: str | None = None   # the guard's reason, e.g. "the loss was nan"
    last_finite_loss: float | None = None
    seconds: float = 0.0
    tokens: int = 0
    reference_forward_passes: int = 0     # forward passes spent on the reference before training
    phases: dict = field(default_factory=dict)   # what a method's own stages did (e.g. a reinforcing fine-tune)

    def summary(self) -> dict:
        return {
            "status": self.status,
            "steps": self.steps,
            "losses": self.losses,
            "logs": self.logs,
            "diverged_at_step": self.diverged_at_step,
            **({"diverged_because": self.diverged_because} if self.diverged_because else {}),
            "last_finite_loss": self.last_finite_loss,
            "seconds": round(self.seconds, 3),
            "tokens": self.tokens,
            "reference_forward_passes": self.reference_forward_passes,
            **({"phases": self.phases} if self.phases else {}),
        }


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def schedule_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Learning-rate multiplier: linear warm-up, then linear decay to 0 or constant."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    return max(0.0, (total - step) / max(1, total - warmup))


def train(model: torch.nn.Module, tokenizer, method: UnlearningMethod, forget: list[Example],
          retain: list[Example] | None, cfg: TrainConfig, seed: int, **options) -> TrainResult:
    """Unlearn with ``method``: its ``unlearn`` hook (by default one ``run_loop``) on a ``Loop`` of
    these data and settings; ``options`` are the ``Loop``'s optional fields."""
    return method.unlearn(model, Loop(tokenizer, forget, retain, cfg, seed, **options))


@dataclass
class Loop:
    """The shared loop bound to one run's data, settings and seed: what ``method.unlearn`` drives.

    ``run`` minimises a method's loss on the forget set (``run_loop``); ``fine_tune`` trains a
    model on the forget set with plain cross-entropy and the same settings, without the
    per-epoch callback (a helper model's epochs are not the run's epochs).
    """

    tokenizer: Any
    forget: list[Example]
    retain: list[Example] | None
    cfg: TrainConfig
    seed: int
    progress: Any = None
    add_eos: bool = True
    log: Any = None
    on_epoch_end: Callable[[int, torch.nn.Module], None] | None = None
    lora: LoraSettings | None = None   # train.lora.*: adapters on the method's linear layers (harness/training/lora.py)

    def run(self, method: UnlearningMethod, model: torch.nn.Module, extras: dict | None = None) -> TrainResult:
        loop = self
        if self.lora is not None and self.lora.enabled:
            if distributed.current(next(model.parameters()).device).sharded:
                raise HarnessError("train.lora does not work under FSDP (--use_fsdp); launch data-parallel "
                                   "(accelerate launch --multi_gpu) or set train.lora.r=0.")
            if self.on_epoch_end is not None:   # per-epoch evaluation sees plain, merged weights
                loop = replace(self, on_epoch_end=lambda epoch, m: self.on_epoch_end(epoch, merged_copy(m)))
        with adapted(model, method.trainable_parameters(model), self.lora, method.name, self.seed) as trainable:
            with only_trainable(model, trainable, method.name):
                return run_loop(model, method, loop, extras)

    def fine_tune(self, model: torch.nn.Module, cfg: TrainConfig | None = None) -> TrainResult:
        return replace(self, retain=None, cfg=cfg or self.cfg, on_epoch_end=None).run(Finetune(), model)


@contextmanager
def only_trainable(model: torch.nn.Module, trainable, method_name: str):
    """Freeze every parameter not in ``trainable`` for the block; put ``requires_grad`` back after."""
    chosen = {id(p) for p in trainable}
    if not chosen:
        raise HarnessError(f"method '{method_name}' selected no trainable parameters: nothing to update.")
    before = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in before:
        p.requires_grad_(id(p) in chosen)
    try:
        yield
    finally:
        for p, flag in before:
            p.requires_grad_(flag)


EPOCH_LINES = 10   # at most about this many per-epoch lines per training run


def epoch_worth_a_line(epoch: int, epochs: int, last: bool) -> bool:
    """Every epoch's line when there are few; with many (finetune.epochs=300), every k-th and the last."""
    return last or epoch + 1 == epochs or (epoch + 1) % max(1, math.ceil(epochs / EPOCH_LINES)) == 0


def unpack_loss(method: UnlearningMethod, out: Any) -> tuple[torch.Tensor, dict]:
    """``method.loss`` returns (a scalar tensor with a graph, a dict of floats to log); anything else is named."""
    if (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], torch.Tensor) and out[0].numel() == 1
            and isinstance(out[1], dict)):
        return out
    got = f"a tuple ({', '.join(type(x).__name__ for x in out)})" if isinstance(out, tuple) else f"{type(out).__name__} {out!r}"[:80]
    raise HarnessError(
        f"method '{method.name}': loss() must return (loss, logs): a scalar torch tensor and a dict of floats to "
        f"log, e.g. `return loss, {{}}`; it returned {got}."
    )


def check_answers_fit(tokenizer, splits: dict[str, list[Example]], max_length: int, add_eos: bool) -> None:
    """Every item keeps at least one scored answer token within ``max_length``.

    Labels are shifted by one, so a token counts only past the first position. An item with none
    gives a loss of 0/0 = NaN, which the loop would report as divergence at step 0.
    """
    for split, items in splits.items():
        empty = [e for e in items if not any(t != IGNORE for t in encode_example(tokenizer, e.prompt, e.answer, max_length, add_eos)[1][1:])]
        if empty:
            raise HarnessError(
                f"max_length={max_length} leaves no answer token to train on for {len(empty)} of {len(items)} {split} "
                f"items (the prompt alone fills it, e.g. '{prompt_text(empty[0].prompt)[:40].replace(chr(10), ' ')}'). Raise train.max_length "
                "(finetune.max_length when preparing models); the prompts of this benchmark need more tokens."
            )


def run_loop(model: torch.nn.Module, method: UnlearningMethod, loop: Loop, extras: dict | None = None) -> TrainResult:
    """Minimise ``method.loss`` over the forget set (paired with retain items when needed).

    Parameters that do not require grad are not updated (``Loop.run`` freezes those a method does
    not train, see ``only_trainable``). ``extras`` seeds ``ctx.extras``.
    ``on_epoch_end(epoch_index, model)`` (0-based index) runs after every completed epoch, never
    after a diverged one, with the model in eval mode; see ``_end_of_epoch`` for what it may
    not disturb. Its time is not counted as training time.
    """
    tokenizer, forget, retain, cfg, seed = loop.tokenizer, loop.forget, loop.retain, loop.cfg, loop.seed
    progress, add_eos, log, on_epoch_end = loop.progress, loop.add_eos, loop.log, loop.on_epoch_end
    if not forget:
        raise HarnessError("the forget set is empty: nothing to train on.")
    needs = method.needs_of()
    if NEEDS_RETAIN in needs and not retain:
        raise HarnessError(
            f"method '{method.name}' needs retain data, but the benchmark provides no retain split. "
            "Choose a method that uses forget data only (e.g. ga), or supply a retain split."
        )
    check_answers_fit(tokenizer, {"forget": forget, **({"retain": retain} if NEEDS_RETAIN in needs else {})},
                      cfg.max_length, add_eos)
    seed_everything(seed)
    device = next(model.parameters()).device
    ranks = distributed.current(device)   # one process unless launched by accelerate/torchrun
    if ranks.sharded:
        check_shardable(method)
    ranks.broadcast_parameters(model)
    encode = lambda items: make_batch(tokenizer, items, cfg.max_length, add_eos).to(device)  # noqa: E731
    result = TrainResult()
    started = time.perf_counter()

    steps_per_epoch, total, epochs = epoch_plan(len(forget), cfg)
    ctx = MethodContext(
        epochs=epochs, forget_examples=forget, retain_examples=retain or [], encode=encode,
        rng=random.Random(seed + 2), extras=dict(extras or {}),
    )
    if NEEDS_REFERENCE_MODEL in needs:
        ctx.reference_model = copy.deepcopy(model).eval().requires_grad_(False)
    if NEEDS_REFERENCE_LOGPROBS in needs:
        ctx.reference_logprobs, result.reference_forward_passes = _reference_logprobs(
            model, forget, encode, cfg.micro_batch
        )
    model.eval()
    with torch.no_grad():  # not inference_mode: these tensors enter autograd graphs later
        method.before_training(model, ctx)
    result.reference_forward_passes += int(ctx.extras.get("reference_forward_passes", 0))
    warmup = int(round(cfg.warmup_ratio * total))
    trained = ranks.training_model(model)   # the model itself, or under FSDP a sharded copy (weights synced back)
    # The fused kernel does the same update as the default one, about 6x faster on CPU for 135M params.
    optimiser = torch.optim.AdamW(
        [p for p in trained.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay,
        fused=device.type in ("cpu", "cuda"),
    )
    scheduler = LambdaLR(optimiser, lambda s: schedule_factor(s, total, warmup, cfg.schedule))
    order_rng = torch.Generator().manual_seed(seed)
    pair_rng = random.Random(seed + 1)
    trained.train()
    bar = progress(total=total, desc=f"train {method.name}", unit="step") if progress else None

    lengths = [len(prompt_text(e.prompt)) + len(e.answer) for e in forget]
    guard = DivergenceGuard(cfg.divergence_growth)
    callback_s = 0.0
    for epoch in range(epochs):
        order = epoch_order(lengths, cfg.global_batch, order_rng, cfg.group_by_length)
        for start in range(0, len(order), cfg.global_batch):
            if result.steps >= total:
                break
            chunk = order[start : start + cfg.global_batch]
            ctx.step, ctx.epoch = result.steps, epoch
            step_loss, step_logs, finite = 0.0, {}, True
            optimiser.zero_grad(set_to_none=True)
            # Micro-batches and their retain pairing are drawn for the whole step, then shared out
            # between ranks (all of them when there is one process): see harness/training/distributed.py.
            micro = [chunk[at : at + cfg.micro_batch] for at in range(0, len(chunk), cfg.micro_batch)]
            pairs = [[pair_rng.randrange(len(retain)) for _ in idx] for idx in micro] if retain and NEEDS_RETAIN in needs else None
            for j, padding in ranks.passes(len(micro)):
                idx = micro[j]
                batch = MethodBatch(
                    forget=encode([forget[i] for i in idx]),
                    forget_index=torch.tensor(idx, device=device),
                    retain=encode([retain[i] for i in pairs[j]]) if pairs is not None else None,
                    padding=padding,
                )
                loss, logs = unpack_loss(method, method.loss(trained, batch, ctx))
                weight = 0.0 if padding else len(idx) / len(chunk)
                value = float(loss.detach())
                problem = None if padding else guard.problem(value)
                if problem is not None:
                    finite = False
                    result.diverged_because = problem
                    if not ranks.sharded:   # sharded ranks must still join this pass's collectives
                        break
                (loss * weight).backward()
                if padding or not finite:
                    continue
                step_loss += value * weight
                for k, v in logs.items():
                    step_logs[k] = step_logs.get(k, 0.0) + v * weight
                result.tokens += int(batch.forget.attention_mask.sum())
            step_loss, step_logs, finite = ranks.sum_step(step_loss, step_logs, finite)
            if not finite:
                result.status, result.diverged_at_step = "diverged", result.steps
                result.diverged_because = result.diverged_because or "another process's loss diverged"
                optimiser.zero_grad(set_to_none=True)
                break
            ranks.sum_gradients(trained)
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(trained.parameters(), cfg.max_grad_norm)
            optimiser.step()
            scheduler.step()
            result.steps += 1
            result.losses.append(round(step_loss, 6))
            result.logs.append({k: round(v, 6) for k, v in step_logs.items()})
            result.last_finite_loss = round(step_loss, 6)
            if bar:
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.4f}")
        if log and result.losses and epoch_worth_a_line(epoch, epochs, result.steps >= total):
            log(f"  {method.name} epoch {epoch + 1}/{epochs}: step {result.steps}/{total}, loss {result.losses[-1]:.4f}")
        ranks.sync_weights(trained, model)   # every epoch ends with ``model`` holding the trained weights
        if on_epoch_end and result.status != "diverged":
            callback_s += _end_of_epoch(on_epoch_end, epoch, model)
        if result.status == "diverged" or result.steps >= total:
            break
    if bar:
        bar.close()
    model.eval()
    result.tokens = ranks.sum_int(result.tokens)
    result.seconds = time.perf_counter() - started - callback_s
    return result


def check_shardable(method: UnlearningMethod) -> None:
    """Refuse, with the fix, a method that cannot train an FSDP-sharded model (``method.sharding_problem``)."""
    problem = method.sharding_problem()
    if problem:
        raise HarnessError(
            f"method '{method.name}' cannot train under FSDP: {problem}. Leave it out of --methods, or launch "
            "data-parallel (`accelerate launch --multi_gpu --num_processes N -m harness.cli run ...`)."
        )


def epoch_plan(n_forget: int, cfg: TrainConfig) -> tuple[int, int, int]:
    """(steps per epoch, total optimiser steps, epochs) of a run over ``n_forget`` items."""
    steps_per_epoch = math.ceil(n_forget / cfg.global_batch)
    total = cfg.max_steps if cfg.max_steps > 0 else steps_per_epoch * cfg.epochs
    return steps_per_epoch, total, math.ceil(total / steps_per_epoch)


def _end_of_epoch(callback, epoch: int, model: torch.nn.Module) -> float:
    """Run ``callback(epoch, model)`` in eval mode without disturbing the training that follows.

    Evaluating between epochs must not change the run: the global random states (dropout draws
    from them) are put back afterwards and train mode is restored, so a run with per-epoch
    evaluation trains the same weights as one without. Returns the seconds spent.
    """
    started = time.perf_counter()
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    model.eval()
    try:
        callback(epoch, model)
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])
        model.train()
    return time.perf_counter() - started


def epoch_order(lengths: list[int], global_batch: int, rng: torch.Generator, group_by_length: bool) -> list[int]:
    """A seeded shuffle; with grouping, each global batch holds examples of similar length.

    Grouping (as in transformers' ``group_by_length``) sorts a shuffled order by length and
    then shuffles the order of the resulting batches, so padding is small but batch order is
    still random. It changes which examples share a step, not which are seen per epoch.
    """
    order = torch.randperm(len(lengths), generator=rng).tolist()
    if not group_by_length:
        return order
    order.sort(key=lambda i: lengths[i])
    batches = [order[i : i + global_batch] for i in range(0, len(order), global_batch)]
    return [i for b in torch.randperm(len(batches), generator=rng).tolist() for i in batches[b]]


@torch.no_grad()
def _reference_logprobs(model, forget: list[Example], encode, micro_batch: int) -> tuple[torch.Tensor, int]:
    """log pi_ref(y|x) of every forget item under the pre-unlearning weights, computed once."""
    model.eval()
    values, passes = [], 0
    for start in range(0, len(forget), micro_batch):
        values.append(sequence_logprob(model, encode(forget[start : start + micro_batch])).float())
        passes += 1
    return torch.cat(values), passes
