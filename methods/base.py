"""The method contract: a name, a config dataclass, what it needs, and a loss.

The training loop owns the optimiser, schedule, accumulation, precision, devices and the
divergence guard; a method only says how to turn one batch into a loss to minimise.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import random
from typing import Any, Callable, ClassVar

import torch

from harness.batching import Example, TokenBatch

# What a method can ask the loop for.
NEEDS_RETAIN = "retain"                      # a retain batch paired with each forget batch
NEEDS_REFERENCE_MODEL = "reference_model"    # a frozen copy of the pre-unlearning model, live
NEEDS_REFERENCE_LOGPROBS = "reference_logprobs"  # log pi_ref(y|x) of every forget item, computed once


@dataclass
class MethodBatch:
    forget: TokenBatch
    forget_index: torch.Tensor            # positions of the forget items in the forget set
    retain: TokenBatch | None = None


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

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.Config()

    def loss(self, model, batch: MethodBatch, ctx: MethodContext) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def before_training(self, model, ctx: MethodContext) -> None:
        """Compute fixed reference quantities once, with the pre-unlearning weights (no grad)."""

    def needs_of(self) -> frozenset[str]:
        """Needs can depend on the config (GradDiff's KL variant needs a reference model)."""
        return self.needs
