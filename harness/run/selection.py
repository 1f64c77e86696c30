"""Checkpoint selection: which epoch of an unlearning run is the one that gets reported.

Picking the epoch that looks best after seeing the results (per method, per metric) flatters
every method and makes rows incomparable. So the rule is declared before the run
(``--set eval.select=RULE``), recorded with every result, and applied to every method alike.
A rule is a small pure function over the per-epoch evaluations of one run (each a mapping
with ``epoch``, 1-based, and ``aggregates``), the benchmark's columns and the retain model's
aggregates; it returns the chosen epoch and a reason that says why in words.

Rules:

- ``last``: the final epoch. Needs no per-epoch evaluation.
- ``utility_below_retain``: among the epochs whose every forget column (verbatim or knowledge
  family, lower is better) is at or below the retain model's value, the one with the best
  utility (the benchmark's utility column); ties go to the earliest such epoch. If no epoch
  qualifies, the last epoch, and the reason says so. Needs ``eval.per_epoch=true`` and a
  retain model.

The runner keeps the weights of only the epoch a rule currently prefers, never of every epoch,
so a rule must be consistent: the epoch it finally picks is one it preferred when that epoch
was the newest (true of ``utility_below_retain``: its qualifying epochs only ever grow).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any, Callable, Mapping, Sequence

from harness.errors import HarnessError, closest
from harness.leaderboard.columns import Column

FORGET_FAMILIES = ("verbatim", "knowledge")
DEFAULT_UTILITY_KEY = "model_utility"


@dataclass(frozen=True)
class Selection:
    rule: str
    epoch: int | None
    reason: str
    fallback: bool = False   # the rule found nothing that qualified and fell back to the last epoch

    def as_record(self) -> dict[str, Any]:
        return {"rule": self.rule, "epoch": self.epoch, "reason": self.reason}


@dataclass(frozen=True)
class Rule:
    name: str
    choose: Callable[..., Selection]
    summary: str
    needs_per_epoch: bool     # may pick an epoch other than the last, so every epoch must be evaluated
    needs_retain: bool


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        return None
    return float(value)


def _check_epochs(epochs: Sequence[Mapping[str, Any]]) -> None:
    if not epochs:
        raise ValueError("checkpoint selection needs at least one evaluated epoch")


def utility_column(columns: Sequence[Column], key: str | None = None) -> Column:
    """The column a rule maximises: ``key`` if given, else ``model_utility``, else the first utility column.

    A utility column of direction "up" is preferred (MUSE's KnowMem r); one of direction "down"
    (a perplexity) counts as better when lower.
    """
    by_key = {c.key: c for c in columns}
    if key is not None:
        if key not in by_key:
            raise HarnessError(f"the utility key '{key}' is not a column of this benchmark; columns: {', '.join(by_key)}.")
        return by_key[key]
    if DEFAULT_UTILITY_KEY in by_key:
        return by_key[DEFAULT_UTILITY_KEY]
    utility = [c for c in columns if c.family == "utility" and c.direction != "ref"]
    if not utility:
        raise HarnessError(
            "this benchmark has no utility column, so eval.select=utility_below_retain cannot rank epochs; "
            "use eval.select=last."
        )
    return next((c for c in utility if c.direction == "up"), utility[0])


def forget_columns(columns: Sequence[Column]) -> list[Column]:
    """The columns an epoch must bring to the retain model's level: forget families, lower is better."""
    return [c for c in columns if c.family in FORGET_FAMILIES and c.direction == "down"]


def last(epochs: Sequence[Mapping[str, Any]], columns: Sequence[Column] = (),
         retain: Mapping[str, Any] | None = None, utility_key: str | None = None) -> Selection:
    """The final epoch: what a run reports when nothing is selected."""
    _check_epochs(epochs)
    return Selection("last", epochs[-1]["epoch"], "the final epoch")


def _below_retain(aggregates: Mapping[str, Any], forget: Sequence[Column], retain: Mapping[str, Any]) -> bool:
    for column in forget:
        value = _number(aggregates.get(column.key))
        if value is None or value > _number(retain[column.key]):
            return False
    return True


def _utility_score(aggregates: Mapping[str, Any], utility: Column) -> float:
    value = _number(aggregates.get(utility.key))
    if value is None:
        return -math.inf
    return -value if utility.direction == "down" else value


def utility_below_retain(epochs: Sequence[Mapping[str, Any]], columns: Sequence[Column],
                         retain: Mapping[str, Any] | None, utility_key: str | None = None) -> Selection:
    """Best utility among the epochs that forget at least as well as the retain model; else the last."""
    _check_epochs(epochs)
    name = "utility_below_retain"
    if retain is None:
        raise HarnessError(
            f"eval.select={name} compares every epoch with the retain model, but there is no retain model's "
            "evaluation: pass --retain PATH (or let the run prepare one), or use eval.select=last."
        )
    forget = [c for c in forget_columns(columns) if _number(retain.get(c.key)) is not None]
    if not forget:
        raise HarnessError(
            f"eval.select={name}: the retain model has no value for any forget column "
            f"({', '.join(c.key for c in forget_columns(columns)) or 'none defined'}); use eval.select=last."
        )
    utility = utility_column(columns, utility_key)
    names = ", ".join(c.label for c in forget)
    qualifying = [e for e in epochs if _below_retain(e["aggregates"], forget, retain)]
    if not qualifying:
        return Selection(name, epochs[-1]["epoch"], f"none of the {len(epochs)} epochs had every forget column "
                         f"({names}) at or below the retain model's, so the last epoch was taken", fallback=True)
    best = max(qualifying, key=lambda e: _utility_score(e["aggregates"], utility))  # first of ties: earliest
    value = _number(best["aggregates"].get(utility.key))
    shown = "n/a" if value is None else f"{value:.{utility.digits}f}"
    return Selection(name, best["epoch"], f"best {utility.label} ({shown}) among the {len(qualifying)} of "
                     f"{len(epochs)} epochs with every forget column ({names}) at or below the retain model's")


RULES: dict[str, Rule] = {
    "last": Rule("last", last, "the final epoch", needs_per_epoch=False, needs_retain=False),
    "utility_below_retain": Rule(
        "utility_below_retain", utility_below_retain,
        "best utility among epochs whose forget scores are at or below the retain model's (else the last)",
        needs_per_epoch=True, needs_retain=True,
    ),
}


def get_rule(name: str) -> Rule:
    if name not in RULES:
        near = closest(name, RULES)
        hint = f" Did you mean: {', '.join(near)}?" if near else ""
        known = "; ".join(f"{r.name} ({r.summary})" for r in RULES.values())
        raise HarnessError(f"unknown checkpoint-selection rule eval.select={name}.{hint} Known rules: {known}.")
    return RULES[name]


def validate(select: str, per_epoch: bool, columns: Sequence[Column], has_retain: bool | None = None,
             utility_key: str | None = None) -> Rule:
    """Check ``eval.select`` before any work, so a run never trains first and fails at the end."""
    rule = get_rule(select)
    if rule.needs_per_epoch and not per_epoch:
        raise HarnessError(
            f"eval.select={rule.name} picks among the epochs of a run, so every epoch must be evaluated: "
            "add --set eval.per_epoch=true."
        )
    if rule.needs_retain:
        utility_column(columns, utility_key)
        if not forget_columns(columns):
            raise HarnessError(f"eval.select={rule.name}: this benchmark has no forget column of direction 'down' "
                               "to compare with the retain model; use eval.select=last.")
        if has_retain is False:
            raise HarnessError(
                f"eval.select={rule.name} compares every epoch with the retain model, but this run has none: "
                "pass --retain PATH, or use eval.select=last."
            )
    return rule


def select(name: str, epochs: Sequence[Mapping[str, Any]], columns: Sequence[Column],
           retain: Mapping[str, Any] | None, utility_key: str | None = None) -> Selection:
    """Apply the rule ``name`` to a run's per-epoch evaluations."""
    return get_rule(name).choose(epochs, columns, retain, utility_key)
