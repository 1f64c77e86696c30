"""Probability-based knowledge scores from answer-token log-probs (reference.md section 2, TOFU).

Inputs are natural-log probabilities of the answer tokens under teacher forcing.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from harness.scoring.catalogue import metric
from harness.scoring.aggregate import mean_or_error


def _mean_logprob(logprobs: Sequence[float]) -> float:
    arr = np.asarray(logprobs, dtype=float).ravel()
    if arr.size == 0:
        raise ValueError("need at least one answer-token log-prob (the answer has no tokens)")
    return float(arr.mean())


@metric(
    "mean_token_probability",
    "knowledge",
    "Length-normalised answer probability exp(mean token log-prob) (TOFU Probability).",
)
def mean_token_probability(logprobs: Sequence[float]) -> float:
    """p̄(a|q) = exp(-NLL(a|q)/|a|) = exp(mean token log-prob) (reference.md section 2, notation).

    Raises ValueError on an empty answer.
    """
    return float(np.exp(_mean_logprob(logprobs)))


@metric(
    "normalised_answer_probability",
    "utility",
    "p̄(a) / (p̄(a) + Σ p̄(perturbed)) (TOFU Probability on real_authors / world_facts).",
)
def normalised_answer_probability(
    answer_logprobs: Sequence[float], perturbed_logprobs: Sequence[Sequence[float]]
) -> float:
    """p̄(a) / (p̄(a) + Σ_j p̄(pert_j)) (reference.md section 2, TOFU real_authors/world_facts)."""
    p_answer = mean_token_probability(answer_logprobs)
    p_perturbed = sum(mean_token_probability(lp) for lp in perturbed_logprobs)
    return float(p_answer / (p_answer + p_perturbed))


@metric(
    "truth_ratio",
    "knowledge",
    "Per-item TOFU truth ratio R = geometric mean of p̄(perturbed) / p̄(paraphrased).",
)
def truth_ratio(paraphrased_logprobs: Sequence[float], perturbed_logprobs: Sequence[Sequence[float]]) -> float:
    """R = (Π_j p̄(pert_j))^(1/m) / p̄(para), computed in log space.

    log R = mean_j(mean log-prob of pert_j) - mean log-prob of para (reference.md section 2, TOFU
    "Truth ratio"). For real_authors/world_facts pass the original answer as ``paraphrased_logprobs``.
    """
    if len(perturbed_logprobs) == 0:
        raise ValueError("truth ratio needs at least one perturbed answer")
    log_pert = float(np.mean([_mean_logprob(lp) for lp in perturbed_logprobs]))
    return float(np.exp(log_pert - _mean_logprob(paraphrased_logprobs)))


def _checked_ratios(ratios: Sequence[float]) -> np.ndarray:
    arr = np.asarray(ratios, dtype=float).ravel()
    if np.any(np.isnan(arr)) or np.any(arr < 0):
        raise ValueError("truth ratios must be non-negative numbers")
    return arr


@metric(
    "truth_ratio_forget_score",
    "knowledge",
    "TOFU forget-set truth ratio: mean(min(R, 1/R)).",
)
def truth_ratio_forget_score(ratios: Sequence[float]) -> float:
    """mean(min(R, 1/R)) over items (reference.md section 2, TOFU forget set).

    R = 0 or R = inf (from under/overflow) count as 0, the limit of min(R, 1/R).
    """
    arr = _checked_ratios(ratios)
    with np.errstate(divide="ignore"):
        vals = np.where(arr <= 1.0, arr, 1.0 / arr)
    return mean_or_error(vals, "truth ratio (forget)")


@metric(
    "truth_ratio_retain_score",
    "utility",
    "TOFU truth ratio on retain/real_authors/world_facts: mean(max(0, 1 - R)).",
)
def truth_ratio_retain_score(ratios: Sequence[float]) -> float:
    """mean(max(0, 1 - R)) over items (reference.md section 2, TOFU retain/real_authors/world_facts)."""
    arr = _checked_ratios(ratios)
    return mean_or_error(np.maximum(0.0, 1.0 - arr), "truth ratio (retain)")
