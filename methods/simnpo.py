"""SimNPO: NPO without a reference model, on the length-normalised answer likelihood.

    L = -w_f · (2/β) · mean_i log σ(β · (NLL(y_i|x_i)/|y_i| - δ))  +  α · CE(retain)

with NLL(y|x)/|y| the mean negative log-likelihood over the answer tokens of one example (a
per-example mean, not the batch-wide token mean CE uses), δ a margin and w_f the forget
weight. Minimising it pushes each example's per-token NLL up past δ, with the weight
σ(-β·(NLL/|y| - δ)) fading for examples already forgotten. No reference model, no
reference log-probs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from harness.errors import HarnessError
from harness.training.losses import token_logprobs
from harness.registry import register_method
from harness.methods.base import NEEDS_RETAIN, UnlearningMethod, plus_retain


@dataclass
class SimNPOConfig:
    # β = 4.5 and forget weight 0.125 are the TOFU forget10 values in reference.md section 3;
    # δ = 0 and α = 1 are this harness's defaults (reference.md gives no value for them).
    beta: float = 4.5
    delta: float = 0.0
    forget_weight: float = 0.125
    alpha: float = 1.0          # weight of CE(retain); 0 trains on forget data only

    def __post_init__(self):
        if self.beta <= 0:
            raise HarnessError(f"simnpo.beta must be positive, got {self.beta}.")


def mean_answer_nll(model, batch):
    """NLL(y|x)/|y| per example [B]: minus the mean log-prob over that example's answer tokens."""
    logp, mask = token_logprobs(model, batch)
    return -logp.sum(-1) / mask.sum(-1).clamp(min=1)


@register_method()
class SimNPO(UnlearningMethod):
    name = "simnpo"
    label = "SimNPO"
    description = "Reference-free NPO on the per-token answer NLL, plus alpha * CE(retain)"
    paper = "Fan et al. 2024, Simplicity Prevails: Rethinking Negative Preference Optimization for LLM Unlearning"
    Config = SimNPOConfig
    needs = frozenset({NEEDS_RETAIN})

    def needs_of(self):
        return self.needs if self.config.alpha > 0 else frozenset()

    def loss(self, model, batch, ctx):
        c = self.config
        nll = mean_answer_nll(model, batch.forget)
        forget_term = -(2.0 / c.beta) * F.logsigmoid(c.beta * (nll - c.delta)).mean()
        logs = {"simnpo": forget_term.item(), "forget_nll_per_token": nll.mean().item()}
        return plus_retain(c.forget_weight * forget_term, logs, model, batch, ctx, c.alpha)
