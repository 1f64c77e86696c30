"""IdkDPO: DPO with a refusal as the preferred answer and the forget answer as the rejected one.

    L = -mean_i log σ(β · [(log π_θ(y_w|x) - log π_ref(y_w|x)) - (log π_θ(y_l|x) - log π_ref(y_l|x))])
        + α · CE(retain)

with y_w an "I don't know" refusal, y_l the forget answer, log π(y|x) the sum of answer-token
log-probs, π_ref the frozen pre-unlearning model, β = 0.1 and α = 1.

Scaling: reference.md does not state IdkDPO's scale, so this is the standard DPO loss
-log σ(β·Δ) (Rafailov et al. 2023), without the 2/β factor of the NPO formula. Implementations
that multiply by 2/β (OpenUnlearning does) have a forget term 2/β = 20 times larger at β = 0.1,
so learning rates do not transfer between the two without that factor.

Each forget item gets a refusal drawn afresh every epoch, a seeded choice per (epoch, item),
from ``ctx.extras["refusals"]`` when the benchmark supplies a list, else ``REFUSALS``. All
draws are made up front in ``before_training``, where the reference log-probs of the forget
answers and of every drawn (item, refusal) pair are computed once with the pre-unlearning
weights; training then needs no live reference model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.data.batching import Example
from harness.errors import HarnessError
from harness.training.losses import sequence_logprob
from harness.registry import register_method
from harness.methods.base import NEEDS_RETAIN, UnlearningMethod, plus_retain
from harness.methods.refusals import REFUSALS, sample_refusals


def _like(answer: str, refusal: str) -> str:
    """The refusal with the forget answer's leading whitespace (a space in plain prompt formats,
    none as a chat template's assistant turn)."""
    return answer[: len(answer) - len(answer.lstrip())] + refusal.strip()

REFERENCE_BATCH = 8   # examples per reference forward pass in before_training


@dataclass
class IdkDPOConfig:
    beta: float = 0.1           # DPO inverse temperature (reference.md section 3)
    alpha: float = 1.0          # weight of CE(retain); 0 trains on forget data only

    def __post_init__(self):
        if self.beta <= 0:
            raise HarnessError(f"idkdpo.beta must be positive, got {self.beta}.")


def dpo_loss(logp_w, ref_w, logp_l, ref_l, beta: float):
    """-mean log σ(β · ((log π_θ(y_w) - log π_ref(y_w)) - (log π_θ(y_l) - log π_ref(y_l))))."""
    return -F.logsigmoid(beta * ((logp_w - ref_w) - (logp_l - ref_l))).mean()


def reference_logprobs(model, encode, examples: list[Example]) -> tuple[torch.Tensor, int]:
    """log π(y|x) of each example, REFERENCE_BATCH at a time; returns the values and the pass count."""
    values = [
        sequence_logprob(model, encode(examples[s : s + REFERENCE_BATCH])).float()
        for s in range(0, len(examples), REFERENCE_BATCH)
    ]
    return torch.cat(values), len(values)


@register_method()
class IdkDPO(UnlearningMethod):
    name = "idkdpo"
    label = "IdkDPO"
    description = "DPO preferring an 'I don't know' refusal over the forget answer, plus alpha * CE(retain)"
    paper = "Maini et al. 2024, TOFU: A Task of Fictitious Unlearning for LLMs; Rafailov et al. 2023 (DPO)"
    Config = IdkDPOConfig
    needs = frozenset({NEEDS_RETAIN})

    def needs_of(self):
        return self.needs if self.config.alpha > 0 else frozenset()

    def before_training(self, model, ctx):
        """Draw every epoch's refusals and compute all reference log-probs, once (no grad)."""
        pool = ctx.extras.get("refusals")
        pool = REFUSALS if pool is None else tuple(pool)   # an empty list is an error, not a fallback
        forget = ctx.forget_examples
        drawn = [sample_refusals(len(forget), ctx.rng, pool) for _ in range(max(1, ctx.epochs))]
        # A refusal drawn for the same item in several epochs is scored once.
        pairs = list(dict.fromkeys((i, r) for row in drawn for i, r in enumerate(row)))
        ref_forget, forget_passes = reference_logprobs(model, ctx.encode, forget)
        pair_logp, pair_passes = reference_logprobs(
            model, ctx.encode, [Example(forget[i].prompt, _like(forget[i].answer, r)) for i, r in pairs]
        )
        by_pair = dict(zip(pairs, pair_logp.tolist()))
        ref_refusal = torch.tensor(
            [[by_pair[(i, r)] for i, r in enumerate(row)] for row in drawn], device=ref_forget.device
        )
        ctx.extras.update(
            idk_refusals=drawn,                  # [epoch][item] -> refusal text
            idk_ref_refusal_logprobs=ref_refusal,  # [epochs, N]: log π_ref(y_w|x)
            idk_ref_forget_logprobs=ref_forget,    # [N]: log π_ref(y_l|x)
        )
        ctx.extras["reference_forward_passes"] = (
            ctx.extras.get("reference_forward_passes", 0) + forget_passes + pair_passes
        )

    def loss(self, model, batch, ctx):
        if "idk_refusals" not in ctx.extras:
            raise HarnessError("idkdpo: before_training was not run, so there are no refusals or reference log-probs.")
        epoch = ctx.epoch % len(ctx.extras["idk_refusals"])
        idx = batch.forget_index.tolist()
        refusals = [ctx.extras["idk_refusals"][epoch][i] for i in idx]
        preferred = ctx.encode([Example(ctx.forget_examples[i].prompt, _like(ctx.forget_examples[i].answer, r))
                                  for i, r in zip(idx, refusals)])

        logp_w = sequence_logprob(model, preferred)
        logp_l = sequence_logprob(model, batch.forget)
        ref_w = ctx.extras["idk_ref_refusal_logprobs"][epoch][batch.forget_index].to(logp_w)
        ref_l = ctx.extras["idk_ref_forget_logprobs"][batch.forget_index].to(logp_l)
        forget_term = dpo_loss(logp_w, ref_w, logp_l, ref_l, self.config.beta)
        logs = {
            "dpo": forget_term.item(),
            "chosen_log_ratio": (logp_w - ref_w).mean().item(),
            "rejected_log_ratio": (logp_l - ref_l).mean().item(),
        }
        return plus_retain(forget_term, logs, model, batch, ctx, self.config.alpha)
