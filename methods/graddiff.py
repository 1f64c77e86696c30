"""GradDiff: L = -gamma * CE(forget) + alpha * L_retain, with L_retain = CE(retain) or KL.

The KL variant (GA_KLR in MUSE) is KL(pi_ref || pi_theta) on the retain batch, averaged over
answer tokens only (prompt positions are masked out), against the frozen pre-unlearning model.
OpenUnlearning's KL retain term differs: it averages the per-position KL over every position of
the batch, prompt and padding included, so its value (and its weight against the forget term)
depends on how much prompt and padding a batch holds. We keep the answer-token mean, which
measures only what the retain answers lose and does not move with padding; with retain_loss=kl
our numbers are therefore not those of OpenUnlearning's GradDiff-KL at the same alpha.
"""
from __future__ import annotations

from dataclasses import dataclass

from harness.errors import HarnessError
from harness.training.losses import answer_ce
from harness.registry import register_method
from harness.methods.base import NEEDS_REFERENCE_MODEL, NEEDS_RETAIN, UnlearningMethod, plus_retain


@dataclass
class GradDiffConfig:
    gamma: float = 1.0        # weight of the forget term
    alpha: float = 1.0        # weight of the retain term
    retain_loss: str = "nll"  # "nll" (CE on retain) or "kl" (KL to the reference on retain)

    def __post_init__(self):
        if self.retain_loss not in ("nll", "kl"):
            raise HarnessError(f"graddiff.retain_loss must be 'nll' or 'kl', got '{self.retain_loss}'.")


@register_method()
class GradDiff(UnlearningMethod):
    name = "graddiff"
    label = "GradDiff"
    description = "Gradient difference: ascend CE on forget, descend CE (or KL) on retain"
    paper = "Liu et al. 2022, Continual Learning and Private Unlearning; Maini et al. 2024 (TOFU)"
    Config = GradDiffConfig
    needs = frozenset({NEEDS_RETAIN})

    def needs_of(self):
        return self.needs | ({NEEDS_REFERENCE_MODEL} if self.config.retain_loss == "kl" else set())

    def loss(self, model, batch, ctx):
        forget_ce = answer_ce(model, batch.forget)
        return plus_retain(-self.config.gamma * forget_ce, {"forget_ce": forget_ce.item()}, model, batch, ctx,
                           self.config.alpha, self.config.retain_loss)
