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
- ``utility_preserving``: MUSE's utility-preserving operating point (Shi et al. 2024,
  arXiv 2407.06460): among the candidates whose utility stays at or above
  ``eval.select_fraction`` (default 0.9) times the target model's, the one with the most
  forgetting on the rule's forget column (``eval.select_forget``; default the benchmark's
  first knowledge column of direction "down": synthetic ROUGE f, MUSE-News KnowMem f, as MUSE
  reads KnowMem on the forget QA). Ties go to the earliest candidate. If none keeps the
  utility, the candidate with the highest utility, and the reason says so. Needs the target's
  scores; with ``eval.per_epoch=true`` the candidates are the epochs, with ``--sweep`` also the
  swept settings (harness/run/sweep.py).
- ``first_below_retain``: the MUSE authors' released rule (``knowmem/scripts/
  get_best_forget_quality.py`` of github.com/jaechan-repo/muse_bench): the first candidate, in
  order of unlearning (epochs in order; swept settings in the order given), whose forget column
  is at or below the retain model's; else the last. Needs a retain model.

A rule sees candidates in order; a candidate is a mapping with ``epoch`` (its 1-based position)
and ``aggregates``. A ``Context`` carries what a rule compares with: columns, the retain and
target models' aggregates and the rule's declared parameters.

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
    fallback: bool = False   # the rule found nothing that qualified and fell back (to the last epoch, or as it says)

    def as_record(self) -> dict[str, Any]:
        return {"rule": self.rule, "epoch": self.epoch, "reason": self.reason}


@dataclass(frozen=True)
class Rule:
    name: str
    choose: Callable[..., Selection]
    summary: str
    needs_per_epoch: bool     # may pick an epoch other than the last, so every epoch must be evaluated
    needs_retain: bool
    needs_target: bool = False
    fallback_is_last: bool = True   # when nothing qualifies it takes the newest candidate (whose weights are in the model)
    parameters: tuple[str, ...] = ()   # eval.* settings the rule reads (recorded with the cell only for this rule)

    @property
    def may_pick_earlier(self) -> bool:
        """Given several epochs, may it choose one before the last? Every rule but ``last`` may, whether or
        not it demands per-epoch evaluation (utility_preserving also ranks swept points without it)."""
        return self.choose is not last


@dataclass(frozen=True)
class Context:
    """What a rule compares candidates with, declared before the run."""

    columns: Sequence[Column] = ()
    retain: Mapping[str, Any] | None = None
    target: Mapping[str, Any] | None = None
    utility_key: str | None = None
    forget_key: str | None = None      # eval.select_forget ('' / None: the benchmark's default)
    fraction: float = 0.9              # eval.select_fraction


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


def forget_column(columns: Sequence[Column], key: str | None = None, default: str | None = None) -> Column:
    """The column whose forgetting a rule maximises: ``key`` if given, else the benchmark's ``default``,
    else its first knowledge column of direction "down" (MUSE reads KnowMem on the forget QA)."""
    by_key = {c.key: c for c in columns}
    for wanted in (key, default):
        if wanted:
            if wanted not in by_key or by_key[wanted].direction not in ("up", "down") \
                    or by_key[wanted].family not in FORGET_FAMILIES:
                ranked = [c.key for c in columns if c.family in FORGET_FAMILIES and c.direction in ("up", "down")]
                raise HarnessError(f"eval.select_forget={wanted} is not a forget column of this benchmark with a "
                                   f"direction; choose one of: {', '.join(ranked) or 'none'}.")
            return by_key[wanted]
    for family in ("knowledge", "verbatim"):
        found = next((c for c in columns if c.family == family and c.direction == "down"), None)
        if found is not None:
            return found
    raise HarnessError("this benchmark has no forget column of direction 'down' for the selection rule; "
                       "name one with --set eval.select_forget=KEY, or use eval.select=last.")


def _forgetting(aggregates: Mapping[str, Any], column: Column) -> float:
    """Larger = more forgetting; a missing value ranks last."""
    value = _number(aggregates.get(column.key))
    if value is None:
        return -math.inf
    return -value if column.direction == "down" else value


def _shown(value: Any, column: Column) -> str:
    number = _number(value)
    return "n/a" if number is None else column.format(number)


def utility_preserving(epochs: Sequence[Mapping[str, Any]], columns: Sequence[Column] = (),
                       retain: Mapping[str, Any] | None = None, utility_key: str | None = None,
                       context: Context | None = None) -> Selection:
    """Most forgetting among candidates whose utility is at least ``fraction`` x the target's; else the
    candidate with the highest utility (flagged)."""
    _check_epochs(epochs)
    name = "utility_preserving"
    context = context or Context(columns, retain, None, utility_key)
    columns = context.columns or columns
    utility = utility_column(columns, context.utility_key)
    forget = forget_column(columns, context.forget_key)
    target_utility = _number((context.target or {}).get(utility.key))
    if target_utility is None:
        raise HarnessError(
            f"eval.select={name} compares utility with the target model's, but there is no target evaluation with "
            f"a {utility.label} value (its cell failed or is missing); rerun the target row, or use eval.select=last."
        )
    floor = context.fraction * target_utility
    keeps = (lambda u: u is not None and u >= floor) if utility.direction != "down" else \
        (lambda u: u is not None and u <= target_utility / context.fraction)
    qualifying = [e for e in epochs if keeps(_number(e["aggregates"].get(utility.key)))]
    bound = f"{'at or above' if utility.direction != 'down' else 'at or below'} {context.fraction:g} x the target's " \
            f"({_shown(target_utility, utility)})"
    if not qualifying:
        best = max(epochs, key=lambda e: _utility_score(e["aggregates"], utility))
        return Selection(name, best["epoch"], f"none of the {len(epochs)} candidates kept {utility.label} {bound}, so "
                         f"the one with the best {utility.label} ({_shown(best['aggregates'].get(utility.key), utility)}) "
                         "was taken", fallback=True)
    best = max(qualifying, key=lambda e: _forgetting(e["aggregates"], forget))   # first of ties: earliest
    return Selection(name, best["epoch"], f"most forgetting on {forget.label} "
                     f"({_shown(best['aggregates'].get(forget.key), forget)}) among the {len(qualifying)} of "
                     f"{len(epochs)} candidates with {utility.label} {bound}")


def first_below_retain(epochs: Sequence[Mapping[str, Any]], columns: Sequence[Column] = (),
                       retain: Mapping[str, Any] | None = None, utility_key: str | None = None,
                       context: Context | None = None) -> Selection:
    """The first candidate whose forget column is at or below (or, for 'up', at or above) the retain model's."""
    _check_epochs(epochs)
    name = "first_below_retain"
    context = context or Context(columns, retain, None, utility_key)
    columns = context.columns or columns
    forget = forget_column(columns, context.forget_key)
    reference = _number((context.retain or {}).get(forget.key))
    if reference is None:
        raise HarnessError(
            f"eval.select={name} compares {forget.label} with the retain model's, but there is no retain model's "
            "evaluation with that column: pass --retain PATH (or let the run prepare one), or use eval.select=last."
        )
    for e in epochs:
        if _forgetting(e["aggregates"], forget) >= _forgetting({forget.key: reference}, forget):
            return Selection(name, e["epoch"], f"the first of {len(epochs)} candidates (in order of unlearning) with "
                             f"{forget.label} ({_shown(e['aggregates'].get(forget.key), forget)}) at the retain "
                             f"model's level ({_shown(reference, forget)}) or beyond")
    return Selection(name, epochs[-1]["epoch"], f"none of the {len(epochs)} candidates reached the retain model's "
                     f"{forget.label} ({_shown(reference, forget)}), so the last was taken", fallback=True)


RULES: dict[str, Rule] = {
    "last": Rule("last", last, "the final epoch", needs_per_epoch=False, needs_retain=False),
    "utility_below_retain": Rule(
        "utility_below_retain", utility_below_retain,
        "best utility among epochs whose forget scores are at or below the retain model's (else the last)",
        needs_per_epoch=True, needs_retain=True,
    ),
    "utility_preserving": Rule(
        "utility_preserving", utility_preserving,
        "MUSE's utility-preserving point: most forgetting among candidates whose utility stays at or above "
        "eval.select_fraction (0.9) x the target's (else the best utility)",
        needs_per_epoch=False, needs_retain=False, needs_target=True, fallback_is_last=False,
        parameters=("select_fraction", "select_forget"),
    ),
    "first_below_retain": Rule(
        "first_below_retain", first_below_retain,
        "the MUSE authors' released rule: the first candidate whose forget column reaches the retain model's (else the last)",
        needs_per_epoch=False, needs_retain=True, parameters=("select_forget",),
    ),
}

#: rules that take ``context=`` (the older two take the retain aggregates and the utility key alone)
_CONTEXT_RULES = ("utility_preserving", "first_below_retain")


def get_rule(name: str) -> Rule:
    if name not in RULES:
        near = closest(name, RULES)
        hint = f" Did you mean: {', '.join(near)}?" if near else ""
        known = "; ".join(f"{r.name} ({r.summary})" for r in RULES.values())
        raise HarnessError(f"unknown checkpoint-selection rule eval.select={name}.{hint} Known rules: {known}.")
    return RULES[name]


def validate(select: str, per_epoch: bool, columns: Sequence[Column], has_retain: bool | None = None,
             utility_key: str | None = None, forget_key: str | None = None, fraction: float = 0.9,
             default_forget: str | None = None) -> Rule:
    """Check ``eval.select`` before any work, so a run never trains first and fails at the end."""
    rule = get_rule(select)
    if "select_fraction" in rule.parameters and not (0 < fraction <= 1):
        raise HarnessError(f"eval.select_fraction must lie in (0, 1] (the share of the target's utility a candidate "
                           f"must keep; MUSE-style 0.9), got {fraction:g}.")
    if "select_forget" in rule.parameters:
        forget_column(columns, forget_key, default_forget)
    if rule.needs_target:
        utility_column(columns, utility_key)
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
           retain: Mapping[str, Any] | None, utility_key: str | None = None, context: Context | None = None) -> Selection:
    """Apply the rule ``name`` to a run's per-epoch evaluations (or to any ordered candidates)."""
    rule = get_rule(name)
    if name in _CONTEXT_RULES:
        return rule.choose(epochs, columns, retain, utility_key,
                           context=context or Context(columns, retain, None, utility_key))
    return rule.choose(epochs, columns, retain, utility_key)
