"""The relearning attacks' learning-rate grid (``attack.relearn_lr_grid``) and the rule that keeps one point.

Why a grid: an attacker who relearns does not know the best learning rate in advance and is free to
try several. Deeb and Roger 2024 (arXiv 2410.08827) fine-tune the unlearned model on the accessible
facts at every rate of a small log-spaced grid and report what the attack recovers on the held-out
facts; their released code (github.com/aghyad-deeb/unlearning_evaluation: ``conf/default.yaml``
``ft.lrs``, ``pipeline.py``, ``finetune_corpus.py``) runs one fine-tune per rate from the same
unlearned weights and stores each rate's held-out accuracy after every epoch, so that the best rate
can be read off afterwards. Only the paper's abstract and that code were readable here, so the
rule below is ours, stated so that it can be checked:

- every grid point is a **fresh attacked copy of the same unlearned weights**, trained at
  ``multiple × base rate`` (the base rate is the budgeted one, or ``attack.relearn_lr``);
- a point is **admissible** only if the reference rows attacked at that same point pass the guard
  (``harness.attacks.scores.guard``: the attacked target keeps its share of the target-retain gap and
  the attacked retain model its utility; a point where no column's gap is measurable is not
  admissible either). The guard depends on the references only, so every method of a run has the
  same admissible points;
- among admissible points the method keeps the one with the **most recovery on the declared column**
  (``attack.relearn_lr_column``, default the first forget column where a higher value means more
  knowledge that the attack scores): its largest attacked value; a tie keeps the smaller multiple;
- if no point is admissible nothing is kept: the record says why, and the row shows the point nearest
  the budget, which the leaderboard's guard then marks as damaging.

The choice is made per cell, i.e. per seed, against that seed's references; the leaderboard averages
seeds of a row and reads the references at each seed's own point.

Choosing the rate on the scored items themselves is the attacker's best case (an upper bound on
recovery), as in the paper, which has no separate validation facts either.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from harness.errors import HarnessError

RULE = ("largest attacked value of the declared column among the grid points whose attacked target and retain "
        "model pass the guard; ties keep the smaller multiple")


def parse_grid(spec: str) -> tuple[float, ...]:
    """``"0.25,0.5,1"`` -> ``(0.25, 0.5, 1.0)``; '' -> ``()``; a bad value is an error naming it."""
    values: list[float] = []
    for part in (p.strip() for p in (spec or "").split(",")):
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise HarnessError(f"attack.relearn_lr_grid: '{part}' is not a number; give multiples of the relearn "
                               "learning rate, e.g. attack.relearn_lr_grid=0.25,0.5,1.") from None
        if not math.isfinite(value) or value <= 0:
            raise HarnessError(f"attack.relearn_lr_grid: every multiple must be a positive number, got '{part}'.")
        if value in values:
            raise HarnessError(f"attack.relearn_lr_grid: the multiple {part} is given twice.")
        values.append(value)
    if len(values) == 1:
        raise HarnessError("attack.relearn_lr_grid needs at least 2 multiples to choose between; for one rate set "
                           "attack.relearn_lr instead.")
    return tuple(sorted(values))


def nearest_budget(multiples: Sequence[float]) -> float:
    """The multiple closest to 1 (the budgeted rate), the smaller on a tie: what a row shows when it keeps none."""
    return min(multiples, key=lambda m: (abs(math.log(m)), m))


def knowledge_value(aggregates: Mapping[str, Any], key: str) -> float | None:
    value = (aggregates or {}).get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        return None
    return float(value)


def choose(points: Sequence[Mapping[str, Any]], column: str) -> tuple[float | None, str]:
    """The kept multiple and why. ``points``: each with ``multiple``, ``aggregates`` and ``guard``
    (``harness.attacks.scores.describe`` of the references' guard at that point, or None when the
    references' results are unavailable)."""
    admissible = [p for p in points if p.get("guard") and p["guard"]["passed"]]
    if not admissible:
        reasons = []
        for p in points:
            g = p.get("guard")
            why = ("the references' results at this point are not available" if not g else
                   "; ".join(g["reasons"]) or "no forget column shows a measurable target-retain gap")
            reasons.append(f"x{p['multiple']:g}: {why}")
        return None, "no grid point passed the guard (" + " | ".join(reasons) + ")"
    scored = [(knowledge_value(p["aggregates"], column), p["multiple"]) for p in admissible]
    valued = [(v, m) for v, m in scored if v is not None]
    if not valued:
        return None, f"no admissible grid point has a value for {column}"
    best = max(valued, key=lambda vm: (vm[0], -vm[1]))
    others = ", ".join(f"x{m:g}: {v:.4g}" for v, m in valued if m != best[1])
    return best[1], (f"most recovery on {column} ({best[0]:.4g}) among the {len(valued)} point(s) that pass the guard"
                     + (f" (others: {others})" if others else ""))
