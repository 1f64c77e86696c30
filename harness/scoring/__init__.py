"""Pure scoring functions: texts, token log-probs and arrays in, numbers out (no model here).

Every metric is declared in ``harness.scoring.catalogue``; the registry lists them from there.
"""
from __future__ import annotations

from harness.scoring import aggregate, memorization, privacy, probability, text
from harness.scoring.aggregate import forget_quality, mean_or_error, model_utility
from harness.scoring.memorization import exact_memorization, extraction_strength, without_eos_prediction
from harness.scoring.privacy import (
    MUSE_BOOKS_RETRAIN_AUC,
    MUSE_NEWS_RETRAIN_AUC,
    gradnorm_score,
    loss_score,
    mia_auc,
    min_k_plus_plus_score,
    min_k_score,
    muse_auc,
    privleak,
    reference_score,
    zlib_score,
)
from harness.scoring.probability import (
    mean_token_probability,
    normalised_answer_probability,
    truth_ratio,
    truth_ratio_forget_score,
    truth_ratio_retain_score,
)
from harness.scoring.text import rouge_l_f1, rouge_l_recall, truncate_at_stop

__all__ = [
    "aggregate",
    "memorization",
    "privacy",
    "probability",
    "text",
    "MUSE_BOOKS_RETRAIN_AUC",
    "MUSE_NEWS_RETRAIN_AUC",
    "exact_memorization",
    "extraction_strength",
    "without_eos_prediction",
    "forget_quality",
    "gradnorm_score",
    "loss_score",
    "mean_or_error",
    "mean_token_probability",
    "mia_auc",
    "min_k_plus_plus_score",
    "min_k_score",
    "model_utility",
    "muse_auc",
    "normalised_answer_probability",
    "privleak",
    "reference_score",
    "rouge_l_f1",
    "rouge_l_recall",
    "truncate_at_stop",
    "truth_ratio",
    "truth_ratio_forget_score",
    "truth_ratio_retain_score",
    "zlib_score",
]
