"""CE-U: cross-entropy unlearning (Yang 2025, arXiv 2503.01224).

At every answer token t of the forget batch, the target distribution is the model's own
(detached) distribution with the true token removed and the rest renormalised,

    q_t = softmax(sg[z_t] with z_t[y_t] := -inf),        q_t[y_t] = 0,

and the loss is the cross-entropy towards it, averaged over the scored tokens:

    L = (1/N) · Σ_t  -Σ_{v ≠ y_t} q_t[v] · log π_θ(v | x, y_<t).

Its gradient with respect to the logits is π_θ - q_t: the true token's logit is pushed down
by exactly its probability (bounded, unlike GA's 1/p on the log-prob scale), and the other
logits move towards the model's own ranking of the alternatives. At the minimum the model
puts no mass on y_t and keeps its relative preferences among the rest. No reference model:
q_t comes from the current weights, recomputed every step.

Sources and what is confirmed. The target construction (true logit set to -inf, softmax,
cross-entropy against the live logits) is from the paper's abstract and introduction and was
cross-checked with OpenUnlearning's ``cross_entropy_unlearning_loss`` (src/trainer/unlearn/ceu.py).
``ignore_first_answer_tokens`` = 1 follows the footnote in the paper's training settings as
OpenUnlearning implements it: the first answer token of each example is not scored. The mean
over all scored tokens of the batch (not per example) is the same as OpenUnlearning's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.training.losses import shifted
from harness.registry import register_method
from harness.methods.base import UnlearningMethod


@dataclass
class CEUConfig:
    ignore_first_answer_tokens: int = 1   # leading answer tokens of each example left unscored (paper footnote)

    def __post_init__(self):
        if self.ignore_first_answer_tokens < 0:
            raise HarnessError(f"ceu.ignore_first_answer_tokens must be >= 0, got {self.ignore_first_answer_tokens}.")


def ceu_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over rows of CE(q, softmax(logits)), q = softmax(sg[logits] with the label's logit at -inf).

    ``logits`` [N, V] and ``labels`` [N] are the scored positions only.
    """
    target = logits.detach().float().scatter(-1, labels.unsqueeze(-1), float("-inf")).softmax(-1)
    return F.cross_entropy(logits.float(), target)


def drop_leading(mask: torch.Tensor, n: int) -> torch.Tensor:
    """The mask without the first ``n`` True positions of each row."""
    if n == 0:
        return mask
    return mask & (mask.long().cumsum(-1) > n)


@register_method()
class CEU(UnlearningMethod):
    name = "ceu"
    label = "CE-U"
    description = "Cross-entropy towards the model's own detached distribution with the true token removed"
    paper = "Yang 2025, CE-U: Cross Entropy Unlearning (arXiv 2503.01224)"
    Config = CEUConfig

    def loss(self, model, batch, ctx):
        logits, labels, mask = shifted(batch.forget, model(**batch.forget.model_inputs()).logits)
        mask = drop_leading(mask, self.config.ignore_first_answer_tokens)
        if not mask.any():
            raise HarnessError(
                f"ceu: no answer token left to score after ignoring the first {self.config.ignore_first_answer_tokens} "
                "of each answer; lower ceu.ignore_first_answer_tokens."
            )
        loss = ceu_loss(logits[mask], labels[mask])
        with torch.no_grad():
            p_true = logits[mask].float().softmax(-1).gather(-1, labels[mask].unsqueeze(-1)).mean()
        return loss, {"ceu": loss.item(), "p_true": p_true.item()}
