"""GA: gradient ascent on the forget set, L = -CE(forget)."""
from __future__ import annotations

from harness.training.losses import answer_ce
from harness.registry import register_method
from harness.methods.base import UnlearningMethod


@register_method()
class GradientAscent(UnlearningMethod):
    name = "ga"
    label = "GA"
    description = "Gradient ascent on the forget answers: L = -CE(forget)"
    paper = "Jang et al. 2023, Knowledge Unlearning for Mitigating Privacy Risks in Language Models"

    def loss(self, model, batch, ctx):
        forget_ce = answer_ce(model, batch.forget)
        return -forget_ce, {"forget_ce": forget_ce.item()}
