"""Membership-inference scores and AUCs (reference.md section 2, "Membership inference attacks" and MUSE PrivLeak).

Every per-text score follows one convention: higher = LESS likely a member.
"""
from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from harness.errors import HarnessError
from harness.scoring.catalogue import metric

# MUSE reference AUC of the retrain model (MUSE convention), used for PrivLeak when no retrain
# model is evaluated (Shi et al. 2024, MUSE, section on PrivLeak; the constant its code compares with).
MUSE_NEWS_RETRAIN_AUC = 0.4772
MUSE_BOOKS_RETRAIN_AUC = 0.5393

# Floor for sigma_t in Min-K%++ so a zero std (a one-hot next-token distribution) stays finite.
MIN_K_PP_SIGMA_EPS = 1e-8


def _as_array(logprobs: Sequence[float]) -> np.ndarray:
    arr = np.asarray(logprobs, dtype=float).ravel()
    if arr.size == 0:
        raise ValueError("need at least one token log-prob")
    return arr


def _lowest_k_mean(values: np.ndarray, k: float) -> float:
    """Mean of the int(len*k) smallest values, at least one (rounding down, minimum 1)."""
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k must be a fraction in (0, 1], got {k}")
    n = max(1, int(len(values) * k))
    return float(np.sort(values)[:n].mean())


@metric("loss_score", "privacy", "LOSS attack: mean token NLL of the text (higher = less likely a member).")
def loss_score(logprobs: Sequence[float]) -> float:
    """LOSS = mean token negative log-likelihood (reference.md section 2, MIA)."""
    return float(-_as_array(logprobs).mean())


@metric("zlib_score", "privacy", "ZLib attack: mean token NLL / zlib-compressed byte length of the text.")
def zlib_score(logprobs: Sequence[float], text: str) -> float:
    """ZLib = mean NLL / len(zlib.compress(text.encode("utf-8"))) (reference.md section 2, MIA)."""
    return loss_score(logprobs) / len(zlib.compress(text.encode("utf-8")))


@metric("min_k_score", "privacy", "Min-K% Prob: -mean of the lowest k fraction of token log-probs (k=0.4).")
def min_k_score(logprobs: Sequence[float], k: float = 0.4) -> float:
    """Min-K% = -mean of the lowest k fraction of token log-probs (reference.md section 2, MUSE PrivLeak).

    Rounding: the number of tokens kept is int(len * k) (rounded down), at least 1.
    """
    return -_lowest_k_mean(_as_array(logprobs), k)


@metric(
    "min_k_plus_plus_score",
    "privacy",
    "Min-K%++: -mean of the lowest k fraction of z_t = (log p_t - mu_t) / sigma_t.",
)
def min_k_plus_plus_score(
    logprobs: Sequence[float], mu: Sequence[float], sigma: Sequence[float], k: float = 0.4
) -> float:
    """Min-K%++ (reference.md section 2, MIA): z_t = (log p(x_t) - mu_t) / sigma_t, score = -mean of lowest k.

    ``mu_t``/``sigma_t`` are the mean and std of log p under the model's own next-token distribution.
    sigma_t is floored at MIN_K_PP_SIGMA_EPS (1e-8) to avoid division by zero. Rounding as in Min-K%.
    """
    lp, m, s = _as_array(logprobs), _as_array(mu), _as_array(sigma)
    if not (lp.shape == m.shape == s.shape):
        raise ValueError(f"logprobs, mu and sigma must have equal lengths, got {lp.size}, {m.size}, {s.size}")
    z = (lp - m) / np.maximum(s, MIN_K_PP_SIGMA_EPS)
    return -_lowest_k_mean(z, k)


@metric(
    "reference_score",
    "privacy",
    "Reference attack: mean token NLL of the text minus that under a reference model (retain model by default).",
)
def reference_score(logprobs: Sequence[float], reference_logprobs: Sequence[float]) -> float:
    """Reference = LOSS(model) - LOSS(reference model) (Carlini et al. 2021; OpenUnlearning ``mia/reference.py``).

    Both are mean token NLLs of the same scored tokens; a text the model fits much better than a
    reference that never saw it scores low (member-like).
    """
    return loss_score(logprobs) - loss_score(reference_logprobs)


@metric(
    "gradnorm_score",
    "privacy",
    "GradNorm attack: mean over parameter tensors of the L2 norm of the text's mean-NLL gradient (HF engine).",
)
def gradnorm_score(grad_norm: float | None) -> float:
    """GradNorm (OpenUnlearning ``mia/gradnorm.py``, p = 2; arXiv 2402.17012): a fitted text has a small
    loss gradient. The engine computes the statistic (``TokenScores.grad_norm``); this checks it exists."""
    if grad_norm is None or not np.isfinite(grad_norm):
        raise ValueError(f"GradNorm needs a finite gradient norm from the HF engine, got {grad_norm!r}")
    return float(grad_norm)


def _auc(positive: Sequence[float], negative: Sequence[float], what: str) -> float:
    """ROC AUC with ``positive`` labelled 1, ``negative`` 0 and the negated score as decision value."""
    pos, neg = np.asarray(positive, dtype=float).ravel(), np.asarray(negative, dtype=float).ravel()
    if pos.size == 0 or neg.size == 0:
        raise HarnessError(f"{what}: needs scores for both groups (got {pos.size} and {neg.size}).")
    from sklearn.metrics import roc_auc_score  # lazy: sklearn is slow to import

    labels = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    return float(roc_auc_score(labels, -np.concatenate([pos, neg])))


@metric("mia_auc", "privacy", "Standard MIA AUC (members = 1): about 1 when the members were memorised.")
def mia_auc(member_scores: Sequence[float], nonmember_scores: Sequence[float]) -> float:
    """P(a member looks more like a member than a non-member): roc_auc_score, members labelled 1, -score."""
    return _auc(member_scores, nonmember_scores, "MIA AUC")


@metric(
    "muse_auc",
    "privacy",
    "MUSE-convention AUC (forget = 0, holdout = 1): about 0 if the forget set is memorised, 0.5 if never seen.",
)
def muse_auc(forget_scores: Sequence[float], holdout_scores: Sequence[float]) -> float:
    """MUSE convention (reference.md section 2, MUSE PrivLeak): forget labelled 0, holdout 1, score negated.

    Equals 1 - mia_auc(forget, holdout).
    """
    return _auc(holdout_scores, forget_scores, "MUSE AUC")


@metric(
    "privleak",
    "privacy",
    "MUSE PrivLeak = (AUC_unlearned - AUC_retrain) / AUC_retrain x 100 (about 0 is good, -100 = memorised).",
)
def privleak(auc_unlearned: float, auc_retrain: float | None) -> float:
    """PrivLeak = (AUC_u - AUC_r) / AUC_r x 100 with MUSE-convention AUCs (reference.md section 2, MUSE)."""
    if auc_retrain is None or auc_retrain == 0:
        raise HarnessError(
            f"PrivLeak needs the retrain (retain) model's AUC, got {auc_retrain!r}. Supply it by evaluating a "
            "retain model on the same forget/holdout texts, or give a published reference AUC "
            f"(MUSE News {MUSE_NEWS_RETRAIN_AUC}, MUSE Books {MUSE_BOOKS_RETRAIN_AUC})."
        )
    return float((auc_unlearned - auc_retrain) / auc_retrain * 100.0)
