"""PDU: primal-dual unlearning with a logit-margin flattening loss (Entesari et al. 2025, arXiv 2506.05314).

Constrained problem: minimise the forget loss subject to CE(retain) <= ε. Its Lagrangian, with
the dual variable λ >= 0:

    L = γ · mean_t (max_v z_{t,v} - mean_v z_{t,v})²  +  λ · (CE(retain) - ε)

z_t the logits at forget answer positions (the forget term is zero exactly when every logit of a
position is equal, i.e. the next-token distribution is uniform). The optimiser takes primal steps
on L; after each micro-batch's loss, once ``dual_warmup_epochs`` epochs have passed, a dual ascent
step λ <- max(0, λ + η · (CE(retain) - ε)) raises the retain weight while the constraint is
violated and lowers it while it holds. λ starts at α.

Defaults are OpenUnlearning's PDU.yaml (γ = 1, α = 1, η = 1, 5 warm-up epochs, updates per step),
except ε, which it leaves for the user (its README: a value somewhat above the pre-unlearning
retain loss). Here ``retain_loss_eps`` unset means: the retain loss of the pre-unlearning model,
measured once before training over the retain set (a constraint that the retain loss may not rise).

With ``primal_dual=false`` λ stays at α and PDU is a fixed-weight sum of the flattening loss and
the shifted retain loss (the same gradient as α·CE(retain)).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.errors import HarnessError
from harness.training.losses import answer_ce, shifted
from harness.registry import register_method
from harness.methods.base import NEEDS_RETAIN, UnlearningMethod

REFERENCE_BATCH = 8   # retain examples per forward pass when measuring the default ε


@dataclass
class PDUConfig:
    gamma: float = 1.0                  # weight of the flattening loss
    alpha: float = 1.0                  # initial dual variable λ (OpenUnlearning's runs use 50-100)
    retain_loss_eps: float | None = None  # ε; unset: the pre-unlearning retain CE
    primal_dual: bool = True            # False keeps λ = α throughout
    dual_step_size: float = 1.0         # η
    dual_warmup_epochs: int = 5         # epochs before λ starts moving

    def __post_init__(self):
        if self.gamma <= 0:
            raise HarnessError(f"pdu.gamma must be positive, got {self.gamma}.")
        if self.alpha < 0:
            raise HarnessError(f"pdu.alpha must be >= 0 (it is the initial dual variable), got {self.alpha}.")
        if self.dual_step_size < 0:
            raise HarnessError(f"pdu.dual_step_size must be >= 0, got {self.dual_step_size}.")
        if self.dual_warmup_epochs < 0:
            raise HarnessError(f"pdu.dual_warmup_epochs must be >= 0, got {self.dual_warmup_epochs}.")
        if self.retain_loss_eps is not None and self.retain_loss_eps < 0:
            raise HarnessError(f"pdu.retain_loss_eps must be >= 0 (a cross-entropy bound), got {self.retain_loss_eps}.")


def flattening_loss(logits: torch.Tensor) -> torch.Tensor:
    """mean over positions of (max logit - mean logit)²; logits [N, V]."""
    logits = logits.float()
    return ((logits.max(dim=-1).values - logits.mean(dim=-1)) ** 2).mean()


def dual_step(lam: float, retain_loss: float, eps: float, step_size: float) -> float:
    """Projected dual ascent: max(0, λ + η·(CE(retain) - ε))."""
    return max(0.0, lam + step_size * (retain_loss - eps))


@register_method()
class PDU(UnlearningMethod):
    name = "pdu"
    label = "PDU"
    description = "Logit-margin flattening on forget answers, retain CE held under a bound by a primal-dual update"
    paper = "Entesari et al. 2025, Constrained Entropic Unlearning: A Primal-Dual Framework for LLMs"
    Config = PDUConfig
    needs = frozenset({NEEDS_RETAIN})

    def before_training(self, model, ctx):
        """λ starts at α; ε defaults to the pre-unlearning retain CE (token mean over the retain set)."""
        eps = self.config.retain_loss_eps
        if eps is None:
            retain = ctx.retain_examples
            if not retain:
                raise HarnessError("pdu needs retain data to measure its default retain_loss_eps; set pdu.retain_loss_eps.")
            total, tokens = 0.0, 0
            for s in range(0, len(retain), REFERENCE_BATCH):
                batch = ctx.encode(retain[s : s + REFERENCE_BATCH])
                n = int((batch.labels[:, 1:] >= 0).sum())
                total += answer_ce(model, batch).item() * n
                tokens += n
            eps = total / tokens
            ctx.extras["reference_forward_passes"] = (
                ctx.extras.get("reference_forward_passes", 0) + -(-len(retain) // REFERENCE_BATCH)
            )
        ctx.extras.update(pdu_eps=float(eps), pdu_lambda=float(self.config.alpha))

    def loss(self, model, batch, ctx):
        if "pdu_lambda" not in ctx.extras:
            raise HarnessError("pdu: before_training was not run, so there is no dual variable.")
        c = self.config
        logits, _, mask = shifted(batch.forget, model(**batch.forget.model_inputs()).logits)
        forget_term = flattening_loss(logits[mask])
        retain_term = answer_ce(model, batch.retain)
        eps, lam = ctx.extras["pdu_eps"], ctx.extras["pdu_lambda"]
        loss = c.gamma * forget_term + lam * (retain_term - eps)
        if c.primal_dual and ctx.epoch >= c.dual_warmup_epochs and not batch.padding:
            ctx.extras["pdu_lambda"] = dual_step(lam, retain_term.item(), eps, c.dual_step_size)
        return loss, {"flatten": forget_term.item(), "retain_nll": retain_term.item(), "dual_lambda": lam}
