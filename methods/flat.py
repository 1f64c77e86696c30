"""FLAT: loss adjustment with forget data only (Wang et al., ICLR 2025).

For each forget question x the model sees two answers: a template answer y_e (a refusal,
drawn afresh every epoch) that it should prefer, and the forget answer y_f that it should drop.
Each answer is scored by its mean token *probability* (not log-probability)

    P̄(y|x) = (1/|y|) · Σ_t π_θ(y_t | x, y_<t),

and the loss is the variational form of an f-divergence between the two answers,

    L = -g*(P̄_e) + f*(g*(P̄_f)),    averaged over the batch,

with g* the activation and f* the convex conjugate of the chosen f. On P̄ in [0, 1] every
divergence offered here has dL/dP̄_e < 0 and dL/dP̄_f > 0: descent raises the template and
lowers the forget answer.

    divergence        g*(v)                       f*(g*(v))
    kl                v                           exp(v - 1)
    pearson           v                           v²/4 + v
    jensen_shannon    log 2 - log(1 + e^-v)       -log 2 + v + log(1 + e^-v)
    total_variation   ½·tanh v                    ½·tanh v          (the official default)
    jeffrey           v                           v + v²/4 + v³/16

Reverse-KL, squared-Hellinger and Neyman are deliberately absent: written the way the official
code writes them, their gradients raise the forget probability instead of lowering it, and we
would rather not offer a guessed correction under the paper's name.

Normalisation. ``per_answer`` (the default) divides each answer's token-probability sum by its
own number of answer tokens, the P̄ above. ``padded_length`` reproduces the official code, which
pads every row to ``pad_length`` tokens (500 for TOFU) and averages the token probabilities over
all the row's shifted next-token positions, answer or not: the sum over the answer divided by
``pad_length - 1`` (499 for TOFU; checked against the official loss and gradient on identical
weights and batches). P̄ then lies in [0, |y|/499], long answers count more than short ones,
and the gradients are roughly |y|/499 times smaller, so learning rates tuned in one mode do not
transfer.

Templates come from ``ctx.extras["refusals"]`` when a benchmark supplies its own list, otherwise
from ``harness.methods.refusals.REFUSALS``. One template per (epoch, forget item) is drawn up
front with the run's seeded ``ctx.rng``, so runs are reproducible and templates change between
epochs. A template takes the same leading whitespace as the forget answer it replaces.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from harness.data.batching import Example
from harness.errors import HarnessError
from harness.training.losses import token_logprobs
from harness.registry import register_method
from harness.methods.base import UnlearningMethod
from harness.methods.refusals import REFUSALS, sample_refusals

LOG2 = math.log(2.0)

# name -> (g*(v), f*(g*(v))) as plain torch functions of the mean token probability v.
DIVERGENCES = {
    "kl": (lambda v: v, lambda v: torch.exp(v - 1)),
    "pearson": (lambda v: v, lambda v: v**2 / 4 + v),
    "jensen_shannon": (
        lambda v: LOG2 - torch.nn.functional.softplus(-v),        # softplus(-v) = log(1 + e^-v)
        lambda v: -LOG2 + v + torch.nn.functional.softplus(-v),
    ),
    "total_variation": (lambda v: 0.5 * torch.tanh(v), lambda v: 0.5 * torch.tanh(v)),
    "jeffrey": (lambda v: v, lambda v: v + v**2 / 4 + v**3 / 16),
}

NOT_OFFERED = ("reverse_kl", "squared_hellinger", "neyman")
NORMALISATIONS = ("per_answer", "padded_length")


@dataclass
class FlatConfig:
    divergence: str = "total_variation"   # one of DIVERGENCES
    normalisation: str = "per_answer"     # "per_answer" (mean over answer tokens) or "padded_length"
    pad_length: int = 500                 # "padded_length": the official padded row length (TOFU: 500)

    def __post_init__(self):
        valid = ", ".join(DIVERGENCES)
        if self.divergence in NOT_OFFERED:
            raise HarnessError(
                f"flat.divergence '{self.divergence}' is not offered: as the official FLAT code states it, its "
                f"gradient raises the forget probability. Choose one of: {valid}."
            )
        if self.divergence not in DIVERGENCES:
            raise HarnessError(f"flat.divergence must be one of: {valid}; got '{self.divergence}'.")
        if self.normalisation not in NORMALISATIONS:
            raise HarnessError(
                f"flat.normalisation must be one of: {', '.join(NORMALISATIONS)}; got '{self.normalisation}'."
            )
        if self.pad_length < 2:
            raise HarnessError(f"flat.pad_length must be at least 2 (a row of N tokens has N - 1 predicted positions), "
                               f"got {self.pad_length}.")


def flat_objective(p_template: torch.Tensor, p_forget: torch.Tensor, divergence: str) -> torch.Tensor:
    """L = -g*(P̄_e) + f*(g*(P̄_f)) per item (no reduction)."""
    g_star, f_star_of_g_star = DIVERGENCES[divergence]
    return -g_star(p_template) + f_star_of_g_star(p_forget)


def template_for(answer: str, refusal: str) -> str:
    """The refusal with the same leading whitespace as the answer it stands in for."""
    lead = answer[: len(answer) - len(answer.lstrip())]
    return lead + refusal.strip()


@register_method()
class Flat(UnlearningMethod):
    name = "flat"
    label = "FLAT"
    description = "f-divergence loss adjustment: raise a refusal template's probability, lower the forget answer's"
    paper = "Wang et al. 2025 (ICLR), LLM Unlearning via Loss Adjustment with only Forget Data"
    Config = FlatConfig

    def mean_probability(self, model, batch) -> torch.Tensor:
        """P̄ per example: token probabilities summed over the answer, divided per the normalisation."""
        logp, mask = token_logprobs(model, batch)
        prob_sum = (logp.exp() * mask).sum(-1)
        if self.config.normalisation == "padded_length":
            return prob_sum / (self.config.pad_length - 1)   # the row's shifted positions
        return prob_sum / mask.sum(-1).clamp(min=1)

    def before_training(self, model, ctx) -> None:
        self.draw_templates(ctx)

    def draw_templates(self, ctx) -> list[list[str]]:
        """One refusal per (epoch, forget item), drawn once with the run's seeded rng."""
        pool = tuple(ctx.extras.get("refusals") or REFUSALS)
        ctx.extras["flat_templates"] = [
            sample_refusals(len(ctx.forget_examples), ctx.rng, pool) for _ in range(max(1, ctx.epochs))
        ]
        return ctx.extras["flat_templates"]

    def loss(self, model, batch, ctx):
        drawn = ctx.extras.get("flat_templates") or self.draw_templates(ctx)
        refusals = drawn[ctx.epoch % len(drawn)]
        items = [ctx.forget_examples[i] for i in batch.forget_index.tolist()]
        templates = [
            Example(ex.prompt, template_for(ex.answer, refusals[i]), id=ex.id)
            for ex, i in zip(items, batch.forget_index.tolist())
        ]
        p_template = self.mean_probability(model, ctx.encode(templates))
        p_forget = self.mean_probability(model, batch.forget)
        loss = flat_objective(p_template, p_forget, self.config.divergence).mean()
        return loss, {"p_template": p_template.mean().item(), "p_forget": p_forget.mean().item()}
