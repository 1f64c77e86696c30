"""WGA: weighted gradient ascent (Wang et al., ICLR 2025).

Gradient ascent in which every answer token's term is weighted by a power of the model's own
(detached) probability of that token:

    L = -γ · (1/N) · Σ_t w_t · CE_t  +  α · CE(retain),      w_t = sg[π_θ(y_t | x, y_<t)]^β,

with CE_t = -log π_θ(y_t | ·), the sum over the N answer tokens of the forget batch and sg the
stop-gradient. Tokens the model already finds unlikely (small π_θ) get a small weight, so the
ascent stops pushing on what is forgotten instead of exploding on it: the gradient of one term
is -π^β ∇ log π, which vanishes as π → 0 for β > 0. β = 0 makes every weight 1 and L plain
GA (with α = 0): the limiting case the tests check.

Sources and what is confirmed. The weighting by a power of the detached token probability is
the paper's WGA (reference.md section 6; the paper's G-effect analysis motivates it).
OpenUnlearning's ``compute_wga_loss`` (src/trainer/utils.py) was used to cross-check the form
(token mean over answer tokens of -w·CE) and the defaults β = 1, γ = 1, α = 1 with an NLL
retain term (configs/trainer/WGA.yaml; its community README says the paper uses β = 1).
Ours: α = 0 drops the retain term and with it the need for retain data.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.errors import HarnessError
from harness.training.losses import token_logprobs
from harness.registry import register_method
from harness.methods.base import NEEDS_RETAIN, UnlearningMethod, plus_retain


@dataclass
class WGAConfig:
    beta: float = 1.0     # exponent of the token-probability weight (0 = GA)
    gamma: float = 1.0    # weight of the forget term
    alpha: float = 1.0    # weight of CE(retain); 0 trains on forget data only

    def __post_init__(self):
        if self.beta < 0:
            raise HarnessError(f"wga.beta must be >= 0 (0 is plain GA), got {self.beta}.")


def weighted_ascent(logp: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """-(1/N) Σ_t w_t · CE_t over the N answer tokens, i.e. (1/N) Σ_t w_t · log π_t."""
    return (weights.detach() * logp * mask).sum() / mask.sum().clamp(min=1)


@register_method()
class WGA(UnlearningMethod):
    name = "wga"
    label = "WGA"
    description = "Weighted gradient ascent: each forget token's ascent term weighted by sg[p]^beta, plus alpha*CE(retain)"
    paper = "Wang et al. 2025 (ICLR), Rethinking LLM Unlearning Objectives: A Gradient Perspective and Go Beyond"
    Config = WGAConfig
    needs = frozenset({NEEDS_RETAIN})

    def needs_of(self):
        return self.needs if self.config.alpha > 0 else frozenset()

    def token_weights(self, p: torch.Tensor) -> torch.Tensor:
        return p ** self.config.beta

    def loss(self, model, batch, ctx):
        logp, mask = token_logprobs(model, batch.forget)
        p = logp.detach().exp()
        forget_term = weighted_ascent(logp, mask, self.token_weights(p))
        logs = {"forget_weighted_ce": -forget_term.item(), "mean_weight": (self.token_weights(p) * mask).sum().item() / max(1, int(mask.sum()))}
        return plus_retain(self.config.gamma * forget_term, logs, model, batch, ctx, self.config.alpha)
