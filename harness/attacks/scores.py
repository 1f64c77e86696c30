"""What an attack's scores mean: the guard, the residual share, and OpenUnlearning's R and Q.

Every attacked row is read against the *attacked* target and the *attacked* retain model on the
same items (``harness/attacks/suite.py`` attacks all three alike):

- **Guard.** An attack that wrecks every model says nothing about what unlearning left. It counts
  only if (a) on every forget column where the target and the retain model differ measurably, the
  attacked target keeps at least ``gap`` (0.8) of the unattacked target-retain gap, and (b) the
  attacked retain model keeps its utility within ``utility`` (0.1) of its own, as a share.
  Forget quality is left out of (a): it is a p-value, not a distance.
- **Residual share** (per forget column): ``(method − retain) / (target − retain)``, all attacked;
  0 means the attacked method looks like the attacked never-trained model, 1 like the attacked
  target. Shown only where ``|target − retain|`` exceeds the width of both their intervals (else
  the ratio divides noise), never for forget quality (a ratio of p-values means nothing).
- **R and Q** (Dorna et al. 2025, arXiv 2506.12618, Sec. 4.1; OpenUnlearning's meta-evaluation)
  for metrics where higher means more knowledge (our ``down`` forget columns), with ``b`` before
  and ``a`` after the attack:
  ``R = min((m_ret_a − m_ret_b) / (m_unl_a − m_unl_b), 1)``: the unlearned model should regain no
  more under relearning than the retain model does; ``Q = min(m_unl_b / m_unl_a, 1)``: quantising
  should not raise what the unlearned model shows. Both are 1 at best; their harmonic mean is the
  paper's robustness. The paper uses them to score *metrics* over many models; we report them per
  method, as the same formulas applied to one model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from harness.scoring.uncertainty import (
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    LEVEL,
    Statistic,
    bootstrap_interval,
    resample_indices,
)

FORGET_FAMILIES = ("verbatim", "knowledge", "privacy")
P_VALUE_KEYS = ("forget_quality",)
DAMAGED = "attack damaged the model"


def forget_columns(columns) -> list:
    """The forget-side columns an attack may bring back (not utility, not auxiliary)."""
    return [c for c in columns if c.family in FORGET_FAMILIES]


def distance_columns(columns) -> list:
    """Forget columns that measure a distance (all but p-values): those the guard and the share use."""
    return [c for c in forget_columns(columns) if c.key not in P_VALUE_KEYS]


def knowledge_columns(columns) -> list:
    """Forget columns where a higher value means more knowledge left (R and Q need that orientation)."""
    return [c for c in distance_columns(columns) if c.direction == "down"]


def utility_key(columns) -> str | None:
    """The utility column the guard reads: ``model_utility``, else the last utility column (as the leaderboard)."""
    utility = [c for c in columns if c.family == "utility"]
    return next((c.key for c in utility if c.key == "model_utility"), utility[-1].key if utility else None)


def interval_width(column, evaluation: Mapping) -> float | None:
    """Width of the 95% bootstrap interval of ``column`` on one evaluation's per-item scores (the
    leaderboard's own resamples and seed); None without a per-item statistic or the items."""
    if getattr(column, "interval", None) is None:
        return None
    try:
        groups = column.interval.groups(evaluation.get("per_sample") or {}, evaluation.get("aggregates") or {})
        found = bootstrap_interval(column.interval, [groups], DEFAULT_RESAMPLES, DEFAULT_SEED)
    except (KeyError, ValueError, TypeError):
        return None
    return found.hi - found.lo


def guard_noise(columns, *evaluations: Mapping) -> dict[str, float]:
    """Per distance column, the widest interval among ``evaluations`` (all of which must have one): the
    ``noise`` the guard takes, computed as the leaderboard computes it."""
    out = {}
    for c in distance_columns(columns):
        widths = [interval_width(c, e) for e in evaluations]
        if widths and all(w is not None for w in widths):
            out[c.key] = max(widths)
    return out


def _num(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        return None
    return float(value)


@dataclass(frozen=True)
class Guard:
    passed: bool
    reasons: tuple[str, ...]
    kept: dict            # column -> share of the target-retain gap the attacked target kept (None: no gap)
    utility: tuple[float | None, float | None]   # the retain model's utility before, after
    measurable: bool = True   # False: the target and the retain model differ measurably on no forget column

    @property
    def damaged(self) -> bool:
        """The attack took the references apart (a reason was found), as opposed to having nothing to probe."""
        return bool(self.reasons)


def guard(target_before: Mapping, target_after: Mapping, retain_before: Mapping, retain_after: Mapping,
          columns, utility_key: str | None, gap: float = 0.8, utility: float = 0.1,
          noise: Mapping[str, float] | None = None) -> Guard:
    """Did the attack leave the references usable? See the module docstring.

    A column counts when its unattacked target-retain gap is at least its last displayed digit and,
    where ``noise`` gives one (the widest 95% interval of the attacked target and retain model), wider
    than that: a gap inside the noise cannot be kept or lost measurably."""
    reasons, kept = [], {}
    for c in distance_columns(columns):
        tb, ta, rb, ra = (_num(v.get(c.key)) for v in (target_before, target_after, retain_before, retain_after))
        floor = max(10.0 ** -c.digits, (noise or {}).get(c.key) or 0.0)
        if None in (tb, ta, rb, ra) or abs(tb - rb) <= floor:
            kept[c.key] = None          # no measurable gap to keep
            continue
        kept[c.key] = (ta - ra) / (tb - rb)
        if kept[c.key] < gap:
            reasons.append(f"{c.label}: the attacked target keeps {kept[c.key]:.1%} of the target-retain gap "
                           f"(at least {gap:.0%} needed)")
    before = _num(retain_before.get(utility_key)) if utility_key else None
    after = _num(retain_after.get(utility_key)) if utility_key else None
    if before is not None and after is not None and after < (1 - utility) * before:
        reasons.append(f"the attacked retain model's utility fell {before:.3g} -> {after:.3g} "
                       f"(more than {utility:.0%})")
    measurable = any(v is not None for v in kept.values())
    return Guard(not reasons and measurable, tuple(reasons), kept, (before, after), measurable)


def residual_share(method: float | None, retain: float | None, target: float | None) -> float | None:
    """``(method − retain) / (target − retain)``; None when a value is missing or target == retain."""
    if None in (method, retain, target) or target == retain:
        return None
    return (method - retain) / (target - retain)


def relearn_robustness(unl_before, unl_after, ret_before, ret_after) -> float | None:
    """OpenUnlearning's R: ``min((ret_a − ret_b) / (unl_a − unl_b), 1)``; None when the unlearned model did not move."""
    values = [_num(v) for v in (unl_before, unl_after, ret_before, ret_after)]
    if None in values or values[1] == values[0]:
        return None
    ub, ua, rb, ra = values
    return min((ra - rb) / (ua - ub), 1.0)


def quantisation_robustness(unl_before, unl_after) -> float | None:
    """OpenUnlearning's Q: ``min(unl_b / unl_a, 1)``; None when the quantised value is 0."""
    ub, ua = _num(unl_before), _num(unl_after)
    if ub is None or ua is None or ua == 0:
        return None
    return min(ub / ua, 1.0)


def harmonic(r: float | None, q: float | None) -> float | None:
    """The paper's combined robustness, HM(R, Q); None unless both are positive."""
    if r is None or q is None or r <= 0 or q <= 0:
        return None
    return 2 * r * q / (r + q)


# --- the residual share's interval -----------------------------------------------------------
def _stat(statistic: Statistic, seeds: Sequence[dict], indices) -> np.ndarray:
    """(B,) the statistic on resampled items, averaged over seeds (seeds share their items)."""
    draws = [statistic({g: {f: np.asarray(v)[indices[g]] for f, v in fields.items()} for g, fields in groups.items()})
             for groups in seeds]
    return np.mean(np.stack(draws), axis=0)


def share_interval(statistic: Statistic, method: Sequence[dict], retain: Sequence[dict], target: Sequence[dict],
                   resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> tuple[float, float] | None:
    """95% paired percentile bootstrap of the residual share: the three rows are resampled on the
    same item indices (they were scored on the same items). None if their items differ."""
    sizes = []
    for groups in (*method, *retain, *target):
        sizes.append({g: len(next(iter(fields.values()))) for g, fields in groups.items()})
    if not sizes or any(s != sizes[0] for s in sizes):
        return None
    indices = resample_indices(sizes[0], resamples, seed)
    m, r, t = (_stat(statistic, rows, indices) for rows in (method, retain, target))
    with np.errstate(divide="ignore", invalid="ignore"):
        share = (m - r) / (t - r)
    share = share[np.isfinite(share)]
    if share.size < 0.9 * resamples:
        return None
    lo, hi = np.quantile(share, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(lo), float(hi)


def describe(guard_result: Guard) -> dict[str, Any]:
    return {"passed": guard_result.passed, "reasons": list(guard_result.reasons), "kept": guard_result.kept,
            "retain_utility": list(guard_result.utility), "measurable": guard_result.measurable}
