"""NPO: negative preference optimisation (Zhang et al. 2024), with its +RT and +KL variants.

    L = -(2/β) · mean_i log σ(-β · (log π_θ(y_i|x_i) - log π_ref(y_i|x_i)))  +  α · L_retain

with log π(y|x) the sum of answer-token log-probs, π_ref the frozen pre-unlearning model and
β = 0.1. ``retain_loss`` picks the variant: "none" (NPO), "nll" (NPO+RT, L_retain = CE(retain))
or "kl" (NPO+KL, L_retain = KL(π_ref || π_θ) on retain answer tokens, against a live
reference model).

Per example, dL/d log π_θ = 2·σ(β·(log π_θ - log π_ref)) = 2·π_θ^β / (π_θ^β + π_ref^β) (over N):
a GA step whose weight fades as the answer's probability falls below the reference's. As β→0
the weight tends to 1 and the gradient equals GA's on the summed log-likelihood,
∇ mean_i log π_θ(y_i|x_i).

The reference term log π_ref(y|x) of each forget item never changes during training, so the
loop computes it once before training (NEEDS_REFERENCE_LOGPROBS) and the forget term needs no
live reference model; only the KL variant keeps one, for the retain batches.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from harness.errors import HarnessError
from harness.training.losses import sequence_logprob
from harness.registry import register_method
from harness.methods.base import (
    NEEDS_REFERENCE_LOGPROBS,
    NEEDS_REFERENCE_MODEL,
    NEEDS_RETAIN,
    UnlearningMethod,
    plus_retain,
)

RETAIN_LOSSES = ("none", "nll", "kl")


@dataclass
class NPOConfig:
    beta: float = 0.1           # inverse temperature (reference.md section 3)
    retain_loss: str = "none"   # "none" (NPO), "nll" (NPO+RT) or "kl" (NPO+KL)
    alpha: float = 1.0          # weight of the retain term

    def __post_init__(self):
        if self.retain_loss not in RETAIN_LOSSES:
            raise HarnessError(
                f"npo.retain_loss must be one of {', '.join(repr(v) for v in RETAIN_LOSSES)}, got '{self.retain_loss}'."
            )
        if self.beta <= 0:
            raise HarnessError(f"npo.beta must be positive, got {self.beta}.")


def npo_loss(logp, ref_logp, beta: float):
    """-(2/β) · mean log σ(-β · (log π_θ - log π_ref)), from per-example log-probs."""
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp - ref_logp)).mean()


@register_method()
class NPO(UnlearningMethod):
    name = "npo"
    label = "NPO"
    description = "Negative preference optimisation on forget answers; retain_loss=nll/kl gives NPO+RT/NPO+KL"
    paper = "Zhang et al. 2024, Negative Preference Optimization: From Catastrophic Collapse to Effective Unlearning"
    Config = NPOConfig
    needs = frozenset({NEEDS_REFERENCE_LOGPROBS})

    def needs_of(self):
        extra = {"none": set(), "nll": {NEEDS_RETAIN}, "kl": {NEEDS_RETAIN, NEEDS_REFERENCE_MODEL}}
        return self.needs | extra[self.config.retain_loss]

    def loss(self, model, batch, ctx):
        if ctx.reference_logprobs is None:
            raise HarnessError("npo needs the reference log-probs of the forget set (ctx.reference_logprobs).")
        logp = sequence_logprob(model, batch.forget)
        ref_logp = ctx.reference_logprobs[batch.forget_index].to(logp)
        forget_term = npo_loss(logp, ref_logp, self.config.beta)
        logs = {"npo": forget_term.item(), "log_ratio": (logp - ref_logp).mean().item()}
        return plus_retain(forget_term, logs, model, batch, ctx, self.config.alpha, self.config.retain_loss)
