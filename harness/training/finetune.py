"""The plain fine-tuning objective, as a method the shared loop can run.

``prepare`` builds the target and retain models with it, the relearning attack and the helper
models of Task Vector and WHP fine-tune with it; it lives apart from both so that the loop and
``prepare`` need not import each other.
"""
from __future__ import annotations

from harness.methods.base import UnlearningMethod
from harness.training.losses import answer_ce


class Finetune(UnlearningMethod):
    """Plain supervised fine-tuning: minimise CE on the given examples."""

    name = "finetune"
    description = "Supervised fine-tuning (used by prepare)"

    def loss(self, model, batch, ctx):
        ce = answer_ce(model, batch.forget)
        return ce, {"ce": ce.item()}
