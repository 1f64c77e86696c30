"""SatImp: saturation-and-importance token reweighting of gradient ascent (Yang et al., ICML 2025).

    L = -γ · (1/N) · Σ_t w_t · CE_t  +  α · CE(retain),
    w_t = sg[p_t]^β1 · (1 - sg[p_t])^β2,       p_t = π_θ(y_t | x, y_<t),

over the N answer tokens of the forget batch (sg: stop-gradient). The paper separates two
goals of reweighting: *saturation* (stop pushing on tokens already unlikely: the p^β1 factor,
WGA's weight) and *importance* (emphasise tokens that matter for the loss: the (1-p)^β2
factor, small for tokens the model is sure of). Limiting cases checked by the tests:
β2 = 0 is WGA with β = β1, and β1 = β2 = 0 (with α = 0) is plain GA.

Sources and what is confirmed. The paper's abstract (arXiv 2505.11953) confirms the two
criteria and their combination; the product weight above was cross-checked against
OpenUnlearning's ``compute_satimp_loss`` (src/trainer/utils.py) and its defaults β1 = 5,
β2 = 1. The loss weights are a choice: OpenUnlearning's community README says the paper sets
the forget:retain ratio to 10 (γ = 1, α = 0.1, also its class defaults) while its
configs/trainer/SatImp.yaml sets γ = 0.1, α = 1; we follow the README and the class (γ = 1,
α = 0.1). α = 0 drops the retain term and its need for retain data.
"""
from __future__ import annotations

from dataclasses import dataclass

from harness.errors import HarnessError
from harness.training.losses import token_logprobs
from harness.registry import register_method
from harness.methods.base import NEEDS_RETAIN, UnlearningMethod, plus_retain
from harness.methods.wga import weighted_ascent


@dataclass
class SatImpConfig:
    beta1: float = 5.0    # saturation exponent: weight sg[p]^beta1
    beta2: float = 1.0    # importance exponent: weight (1 - sg[p])^beta2
    gamma: float = 1.0    # weight of the forget term
    alpha: float = 0.1    # weight of CE(retain); 0 trains on forget data only

    def __post_init__(self):
        if self.beta1 < 0 or self.beta2 < 0:
            raise HarnessError(f"satimp.beta1 and satimp.beta2 must be >= 0, got {self.beta1} and {self.beta2}.")


@register_method()
class SatImp(UnlearningMethod):
    name = "satimp"
    label = "SatImp"
    description = "Gradient ascent with token weights sg[p]^beta1 * (1-sg[p])^beta2 (saturation x importance), plus alpha*CE(retain)"
    paper = "Yang et al. 2025 (ICML), Exploring Criteria of Loss Reweighting to Enhance LLM Unlearning"
    Config = SatImpConfig
    needs = frozenset({NEEDS_RETAIN})

    def needs_of(self):
        return self.needs if self.config.alpha > 0 else frozenset()

    def token_weights(self, p):
        return p ** self.config.beta1 * (1 - p) ** self.config.beta2

    def loss(self, model, batch, ctx):
        logp, mask = token_logprobs(model, batch.forget)
        weights = self.token_weights(logp.detach().exp())
        forget_term = weighted_ascent(logp, mask, weights)
        logs = {"forget_weighted_ce": -forget_term.item(), "mean_weight": (weights * mask).sum().item() / max(1, int(mask.sum()))}
        return plus_retain(self.config.gamma * forget_term, logs, model, batch, ctx, self.config.alpha)
