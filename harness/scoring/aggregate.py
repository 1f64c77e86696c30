"""Aggregates over per-item scores: TOFU model utility and forget quality (reference.md section 2, TOFU)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from harness.errors import HarnessError
from harness.scoring.catalogue import metric


def mean_or_error(values: Sequence[float], metric_name: str) -> float:
    """Arithmetic mean of a non-empty sequence; a HarnessError naming ``metric_name`` if empty."""
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0:
        raise HarnessError(f"{metric_name}: no values to average (the evaluated set produced no items).")
    return float(arr.mean())


@metric(
    "model_utility",
    "utility",
    "TOFU model utility: harmonic mean of probability, ROUGE and truth ratio on retain, real_authors, world_facts.",
)
def model_utility(values: Sequence[float]) -> float:
    """Harmonic mean of the utility numbers (TOFU: 9 of them, reference.md section 2).

    Convention: if any value is 0 the result is 0 (the limit of the harmonic mean; scipy would
    warn or fail instead). Negative values are rejected.
    """
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0:
        raise HarnessError("model utility: no values given; it is the harmonic mean of the utility metrics.")
    if np.any(arr < 0) or not np.all(np.isfinite(arr)):
        raise ValueError(f"model utility needs finite non-negative values, got {arr.tolist()}")
    if np.any(arr == 0):
        return 0.0
    from scipy import stats  # lazy: scipy.stats is slow to import

    return float(stats.hmean(arr))


@metric(
    "forget_quality",
    "knowledge",   # as in the leaderboard columns: it tests the forget-set answers (truth ratios)
    "TOFU forget quality: KS-test p-value between the unlearned and retain models' per-item forget truth ratios.",
)
def forget_quality(unlearned_ratios: Sequence[float], retain_ratios: Sequence[float] | None) -> float:
    """``scipy.stats.ks_2samp(R_unlearned, R_retain).pvalue`` over per-item forget truth ratios.

    High (near 1) means the unlearned model is indistinguishable from a model never trained on the
    forget set (reference.md section 2, TOFU "Forget quality"). Missing retain values are an error,
    never a silent None.
    """
    if retain_ratios is None or len(retain_ratios) == 0:
        raise HarnessError(
            "forget quality needs the retain model's per-item forget-set truth ratios, and none were given. "
            "Supply them by evaluating a retain model on the same forget split (e.g. `harness prepare` or "
            "`--retain <model>`), or point to a stored per-item eval log of a retain model."
        )
    if len(unlearned_ratios) == 0:
        raise HarnessError("forget quality: the unlearned model produced no per-item forget truth ratios.")
    unl = np.asarray(unlearned_ratios, dtype=float)
    ret = np.asarray(retain_ratios, dtype=float)
    if not (np.all(np.isfinite(unl)) and np.all(np.isfinite(ret))):
        raise ValueError("forget quality: truth ratios must be finite numbers.")
    from scipy import stats  # lazy: scipy.stats is slow to import

    return float(stats.ks_2samp(unl, ret).pvalue)
