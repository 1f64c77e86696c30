"""UNDIAL: self-distillation with adjusted logits (Dong et al. 2024, NAACL 2025).

The frozen pre-unlearning model is the teacher. At every answer token t of the forget batch its
logits z_ref,t are adjusted by lowering the true token's logit by a strength β, and the model
is trained towards the softmax of the result:

    q_t = softmax(z_ref,t - β · e_{y_t}),
    L = (1/N) · Σ_t CE(q_t, π_θ(· | x, y_<t))  +  α · CE(retain),

with e_y the one-hot vector of the true token and N the number of answer tokens. The target is
fixed (it depends on the frozen teacher only), so unlike gradient ascent the loss is bounded
below and training converges to the teacher with the memorised token damped by the factor
e^-β relative to the rest. β = 0 makes q_t the teacher's distribution: then the loss is
minimal (its gradient zero) at the teacher itself, a limiting case the tests check.

Sources and what is confirmed. The teacher-logit adjustment and distillation objective are the
paper's (reference.md section 6), cross-checked with OpenUnlearning's ``compute_undial_loss``
(src/trainer/utils.py). Defaults from OpenUnlearning's configs/trainer/UNDIAL.yaml and its
community README: β = 10 (the paper searches 3, 10, 30), no retain term (α = 0, "the original
paper does not use the retain set"); the paper trains LoRA adapters, we train all weights.
Our choice: the mean runs over answer tokens only; OpenUnlearning's mean also covers prompt and
padding positions (whose labels are -100).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.training.losses import shifted
from harness.registry import register_method
from harness.methods.base import NEEDS_REFERENCE_MODEL, NEEDS_RETAIN, UnlearningMethod, plus_retain


@dataclass
class UndialConfig:
    beta: float = 10.0    # how far the true token's teacher logit is lowered
    alpha: float = 0.0    # weight of CE(retain); the paper uses none

    def __post_init__(self):
        if self.beta < 0:
            raise HarnessError(f"undial.beta must be >= 0, got {self.beta}.")


def adjusted_targets(ref_logits: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    """softmax(z_ref - β·e_y) per row of ``ref_logits`` [N, V] with true tokens ``labels`` [N]."""
    adjusted = ref_logits.float().clone()
    adjusted.scatter_add_(-1, labels.unsqueeze(-1), torch.full_like(adjusted[:, :1], -beta))
    return adjusted.softmax(-1)


@register_method()
class Undial(UnlearningMethod):
    name = "undial"
    label = "UNDIAL"
    description = "Self-distillation towards the frozen model's logits with the true token's logit lowered by beta"
    paper = "Dong et al. 2024, UNDIAL: Self-Distillation with Adjusted Logits for Robust Unlearning in Large Language Models"
    Config = UndialConfig
    needs = frozenset({NEEDS_REFERENCE_MODEL})

    def needs_of(self):
        return self.needs | ({NEEDS_RETAIN} if self.config.alpha > 0 else set())

    def loss(self, model, batch, ctx):
        inputs = batch.forget.model_inputs()
        logits, labels, mask = shifted(batch.forget, model(**inputs).logits)
        with torch.no_grad():
            ref_logits, _, _ = shifted(batch.forget, ctx.reference_model(**inputs).logits)
            target = adjusted_targets(ref_logits[mask], labels[mask], self.config.beta)
        loss = F.cross_entropy(logits[mask].float(), target)
        logs = {"undial": loss.item()}
        return plus_retain(loss, logs, model, batch, ctx, self.config.alpha)
