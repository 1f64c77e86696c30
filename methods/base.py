"""The method contract: a name, a config dataclass, what it needs, and a loss.

The training loop owns the optimiser, schedule, accumulation, precision, devices and the
divergence guard; a method only says how to turn one batch into a loss to minimise.

Four optional hooks cover what a loss alone cannot say, so the loop never special-cases a
method:

- ``needs_of()``: data and reference quantities the loop must provide (retain batches, a live
  frozen copy of the model, reference log-probs); the runner refuses up front what a benchmark
  cannot supply.
- ``before_training(model, ctx)``: fixed reference quantities, computed once with the
  pre-unlearning weights and no gradients (NPO's log-probs, FLAT's templates).
- ``trainable_parameters(model)``: the parameters the optimiser updates (default: all that
  require grad). RMU updates a few MLP matrices only; the loop freezes the rest for the run
  and puts ``requires_grad`` back afterwards.
- ``unlearn(model, loop)``: the method's whole procedure. The default is one run of the
  shared loop minimising ``loss``. A method that must do more (fine-tune a copy of the target
  first, or edit weights afterwards) overrides it and drives the same loop through ``loop``:
  ``loop.fine_tune(copy)`` trains a copy on the forget data with plain cross-entropy (the
  "reinforced" model of Task Vector and WHP), ``loop.run(self, model, extras=...)`` runs the
  unlearning loop with ``extras`` handed to the method in ``ctx.extras``. Whatever it does,
  it returns the ``TrainResult`` that the record reports.

Loop settings: the shared loop's defaults (``harness.training.loop.TrainConfig``: linear decay
to zero, gradient clipping at 1.0, weight decay 0.01) are not every paper's. A method declares
the ones its paper uses in ``loop_settings`` (``TrainConfig`` field names, e.g. RMU's
``{"schedule": "constant", "max_grad_norm": 0.0, "weight_decay": 0.0}``) and where they come
from in ``loop_settings_source``. The runner resolves ``train.*`` in this order, later winning:
the dataclass defaults, the benchmark's defaults for all methods, the method's
``loop_settings``, the benchmark's defaults for this method, ``--set``; the record keeps which of
these gave each value (``train_sources``), and the leaderboard's settings column shows the values
that differ from the loop's defaults. The loop itself only ever sees the resolved ``TrainConfig``.

Activations: a method that needs a layer's hidden state reads it inside ``loss`` with
``harness.training.activations.capture_output(decoder_layer(model, l))`` around its own forward pass
(see that module); the loop is not involved.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import random
from typing import Any, Callable, ClassVar

import torch

from harness.data.batching import Example, TokenBatch
from harness.training.losses import answer_ce, answer_kl

# What a method can ask the loop for.
NEEDS_RETAIN = "retain"                      # a retain batch paired with each forget batch
NEEDS_REFERENCE_MODEL = "reference_model"    # a frozen copy of the pre-unlearning model, live
NEEDS_REFERENCE_LOGPROBS = "reference_logprobs"  # log pi_ref(y|x) of every forget item, computed once


@dataclass
class MethodBatch:
    forget: TokenBatch
    forget_index: torch.Tensor            # positions of the forget items in the forget set
    retain: TokenBatch | None = None
    # True for a pass whose loss the loop multiplies by 0: under FSDP a rank short of a micro-batch
    # reruns one so that every rank joins the same collectives. A method may skip side effects then.
    padding: bool = False


@dataclass
class MethodContext:
    """What the loop hands a method besides the batch.

    ``encode`` turns examples into a TokenBatch on the model's device; ``rng`` is seeded by
    the run, so methods that sample (template answers, normal samples) stay reproducible.
    ``extras`` is the method's own store for quantities it computes in ``before_training``.
    """

    reference_model: torch.nn.Module | None = None
    reference_logprobs: torch.Tensor | None = None   # [N_forget], filled once before training
    step: int = 0
    epoch: int = 0
    epochs: int = 1
    forget_examples: list[Example] = field(default_factory=list)
    retain_examples: list[Example] = field(default_factory=list)
    encode: Callable[[list[Example]], TokenBatch] | None = None
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    extras: dict[str, Any] = field(default_factory=dict)


RETAIN_KINDS = ("none", "nll", "kl")


def plus_retain(loss: torch.Tensor, logs: dict[str, float], model, batch: MethodBatch, ctx: MethodContext,
                alpha: float, kind: str = "nll") -> tuple[torch.Tensor, dict[str, float]]:
    """``loss + α·L_retain``, the retain term every method with a retain split shares.

    ``kind`` "nll": L_retain = CE(retain answers); "kl": KL(π_ref || π_θ) on the retain answers
    against ``ctx.reference_model`` (GA_KLR / NPO_KLR); "none", or α <= 0, adds nothing and runs
    no retain pass. The term is logged as ``retain_<kind>``.
    """
    if kind == "none" or alpha <= 0:
        return loss, logs
    if kind == "nll":
        term = answer_ce(model, batch.retain)
    elif kind == "kl":
        term = answer_kl(model, ctx.reference_model, batch.retain)
    else:
        raise ValueError(f"retain term must be one of {RETAIN_KINDS}, got {kind!r}")
    return loss + alpha * term, {**logs, f"retain_{kind}": term.item()}


@dataclass
class NoConfig:
    """For methods without hyper-parameters of their own."""


class UnlearningMethod:
    name: ClassVar[str]
    label: ClassVar[str] = ""        # display name in the leaderboard (defaults to the name)
    description: ClassVar[str]
    paper: ClassVar[str] = ""
    Config: ClassVar[type] = NoConfig
    needs: ClassVar[frozenset[str]] = frozenset()
    # False when the unlearned model exists only at the end (Task Vector edits weights after a
    # fine-tune): per-epoch evaluation is then refused up front.
    has_epochs: ClassVar[bool] = True
    # The loop settings the method's paper uses ({TrainConfig field: value}) and their source
    # (paper, repository file); see the module docstring for where they rank.
    loop_settings: ClassVar[dict[str, Any]] = {}
    loop_settings_source: ClassVar[str] = ""

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.Config()

    def loss(self, model, batch: MethodBatch, ctx: MethodContext) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def before_training(self, model, ctx: MethodContext) -> None:
        """Compute fixed reference quantities once, with the pre-unlearning weights (no grad)."""

    def needs_of(self) -> frozenset[str]:
        """Needs can depend on the config (GradDiff's KL variant needs a reference model)."""
        return self.needs

    def data_problem(self, forget: list, retain: list | None) -> str | None:
        """Why this method (with its config) cannot train on these items, or None when it can.

        Checked before any model loads, so a setting that cannot work with the data (too few
        retain items for SGA's K, say) is refused up front instead of failing after other cells.
        """
        return None

    def sharding_problem(self) -> str | None:
        """Why this method (with its config) cannot train an FSDP-sharded model, or None when it can.

        Under ``accelerate launch --use_fsdp`` the loop hands ``loss`` a sharded copy of the model
        (harness/training/sharding.py): forward passes through the whole model work as usual, but its
        parameters are shards (``torch.autograd.grad`` over them sees no gradient) and modules
        taken from the model in ``before_training`` belong to the unsharded original.
        """
        return None

    def trainable_parameters(self, model) -> list[torch.nn.Parameter]:
        """The parameters the optimiser updates; the loop freezes all others during the run."""
        return [p for p in model.parameters() if p.requires_grad]

    def unlearn(self, model, loop) -> Any:
        """The whole procedure, returning a ``TrainResult``. Default: the shared loop on ``loss``.

        ``loop`` is a ``harness.training.loop.Loop`` bound to this run's data, settings and seed.
        """
        return loop.run(self, model)
