"""AltPO: alternate preference optimisation (Mekala et al. 2024, arXiv 2409.13474).

    L = -(2/β) · mean_i log σ(β · [(log π_θ(ỹ_i|x_i) - log π_ref(ỹ_i|x_i)) - (log π_θ(y_i|x_i) - log π_ref(y_i|x_i))])
        + α · CE(retain)

DPO in which the preferred answer ỹ is a plausible *alternate* answer to the forget question (a
wrong fact of the same kind) and the rejected answer is the forget answer y: negative feedback
on y and positive feedback on something to say instead, rather than a refusal (IdkDPO) or no
target at all (NPO). log π(y|x) is the sum of answer-token log-probs, π_ref the frozen
pre-unlearning model, β = 0.1, α = 1. The 2/β factor is OpenUnlearning's (its DPO trainer, which
its AltPO recipe runs), so at the reference the forget term is (2/β)·log 2.

Alternate answers: the authors generate several per forget item with the model itself and a
prompt asking for changed facts; OpenUnlearning reads them from a file. Here they come from the
benchmark's perturbed answers (``Example.perturbed``: synthetic and TOFU QA items have them), one
drawn per (epoch, item) with the run's seeded rng. A forget item without any (synthetic's
biographies, raw text) gets no preferred answer: its alternate log-ratio is 0 and its term is
NPO's, -(2/β) log σ(-β · forget log-ratio), which is how OpenUnlearning's DPO loss reduces without
a winner. A forget set with no alternates at all is refused (that is NPO: use npo). Caution: the
truth ratio also scores those perturbed answers, so training towards them raises its numerator;
forget quality of AltPO is then not comparable with other methods' (docs/methods.md says more).

As for IdkDPO, all draws are made in ``before_training`` and every reference log-prob is computed
once there with the pre-unlearning weights; training needs no live reference model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.data.batching import Example
from harness.errors import HarnessError
from harness.training.losses import sequence_logprob
from harness.registry import register_method
from harness.methods.base import NEEDS_RETAIN, UnlearningMethod, plus_retain
from harness.methods.idkdpo import dpo_loss, reference_logprobs


@dataclass
class AltPOConfig:
    beta: float = 0.1           # OpenUnlearning's DPO.yaml; its AltPO recipe searches 0.05, 0.1, 0.5
    alpha: float = 1.0          # weight of CE(retain); the recipe searches 1, 2, 5

    def __post_init__(self):
        if self.beta <= 0:
            raise HarnessError(f"altpo.beta must be positive, got {self.beta}.")
        if self.alpha < 0:
            raise HarnessError(f"altpo.alpha must be >= 0, got {self.alpha}.")


def altpo_loss(logp_alt, ref_alt, logp_forget, ref_forget, beta: float):
    """-(2/β) · mean log σ(β · (alternate log-ratio - forget log-ratio))."""
    return (2.0 / beta) * dpo_loss(logp_alt, ref_alt, logp_forget, ref_forget, beta)


def draw_alternates(forget: list[Example], epochs: int, rng) -> list[list[str | None]]:
    """One perturbed answer per (epoch, item), seeded; None for an item that has none."""
    if not any(ex.perturbed for ex in forget):
        raise HarnessError(
            "altpo needs alternate answers, taken from the benchmark's perturbed answers, but no forget item "
            "has any (without them AltPO is NPO). Use a benchmark whose forget items carry perturbed answers "
            "(synthetic, tofu), or --methods npo."
        )
    return [[rng.choice(ex.perturbed) if ex.perturbed else None for ex in forget] for _ in range(max(1, epochs))]


@register_method()
class AltPO(UnlearningMethod):
    name = "altpo"
    label = "AltPO"
    description = "DPO preferring a plausible alternate answer over the forget answer, plus alpha * CE(retain)"
    paper = "Mekala et al. 2024, Alternate Preference Optimization for Unlearning Factual Knowledge in LLMs"
    Config = AltPOConfig
    needs = frozenset({NEEDS_RETAIN})

    def needs_of(self):
        return self.needs if self.config.alpha > 0 else frozenset()

    def before_training(self, model, ctx):
        """Draw every epoch's alternates and compute all reference log-probs, once (no grad)."""
        forget = ctx.forget_examples
        drawn = draw_alternates(forget, ctx.epochs, ctx.rng)
        pairs = list(dict.fromkeys((i, a) for row in drawn for i, a in enumerate(row) if a is not None))
        ref_forget, forget_passes = reference_logprobs(model, ctx.encode, forget)
        pair_logp, pair_passes = reference_logprobs(
            model, ctx.encode, [Example(forget[i].prompt, a) for i, a in pairs]
        )
        by_pair = dict(zip(pairs, pair_logp.tolist()))
        ref_alt = torch.tensor([[by_pair.get((i, a), 0.0) for i, a in enumerate(row)] for row in drawn],
                               device=ref_forget.device)
        ctx.extras.update(altpo_alternates=drawn, altpo_ref_alt_logprobs=ref_alt,
                          altpo_ref_forget_logprobs=ref_forget)
        ctx.extras["reference_forward_passes"] = (
            ctx.extras.get("reference_forward_passes", 0) + forget_passes + pair_passes
        )

    def loss(self, model, batch, ctx):
        if "altpo_alternates" not in ctx.extras:
            raise HarnessError("altpo: before_training was not run, so there are no alternates or reference log-probs.")
        epoch = ctx.epoch % len(ctx.extras["altpo_alternates"])
        alternates = ctx.extras["altpo_alternates"][epoch]
        idx = batch.forget_index.tolist()
        has_alt = [k for k, i in enumerate(idx) if alternates[i] is not None]
        logp_forget = sequence_logprob(model, batch.forget)
        ref_forget = ctx.extras["altpo_ref_forget_logprobs"][batch.forget_index].to(logp_forget)
        # items without an alternate keep log π_θ(ỹ) = log π_ref(ỹ) = 0: their term is NPO's
        logp_alt = torch.zeros_like(logp_forget)
        if has_alt:
            preferred = ctx.encode([Example(ctx.forget_examples[idx[k]].prompt, alternates[idx[k]]) for k in has_alt])
            logp_alt = logp_alt.index_put((torch.tensor(has_alt, device=logp_alt.device),),
                                          sequence_logprob(model, preferred))
        ref_alt = ctx.extras["altpo_ref_alt_logprobs"][epoch][batch.forget_index].to(logp_alt)
        forget_term = altpo_loss(logp_alt, ref_alt, logp_forget, ref_forget, self.config.beta)
        logs = {
            "altpo": forget_term.item(),
            "alternate_log_ratio": (logp_alt - ref_alt).mean().item(),
            "forget_log_ratio": (logp_forget - ref_forget).mean().item(),
        }
        return plus_retain(forget_term, logs, model, batch, ctx, self.config.alpha)
