"""Uncertainty on the leaderboard: a 95% interval on every cell that has one, a paired test of each method
row against the column's best row, forget quality's KS context, and rows that did nothing.

Everything is computed at render time from the records' ``per_sample`` scores (so records written before
intervals existed get them too), with the column's declared ``interval`` statistic
(``harness.scoring.uncertainty``), a fixed seed and ``RESAMPLES`` resamples: the same records give the
same table. A column without a declared statistic, or a record without its per-item scores, gets no
interval, and the table says so instead of showing one.

The rows of one section are scored on the same items (same benchmark, model and data cut), which is
what makes the paired test valid; rows whose item counts differ are not tested against each other.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from harness.scoring.uncertainty import (
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    Interval,
    PairedTest,
    Statistic,
    bootstrap_interval,
    ks_summary,
    paired_test,
)

from .columns import Column

RESAMPLES = DEFAULT_RESAMPLES
SEED = DEFAULT_SEED
TIED = "≈"          # marks a method row not distinguishable from the column's best (paired test, 95%)
AT_P_MIN = "≤"      # marks a forget quality at the smallest p-value its sample sizes allow


@dataclass(frozen=True)
class _Distance(Statistic):
    """|statistic - target|: what a "closer to target is better" column ranks by."""

    inner: Statistic
    target: float

    def groups(self, per_sample, aggregates):
        return self.inner.groups(per_sample, aggregates)

    def __call__(self, batch):
        return np.abs(self.inner(batch) - self.target)


@dataclass
class CellUncertainty:
    """What a cell shows beside its mean: the interval, the test against the best row, KS context."""

    interval: Interval | None = None
    why_none: str = ""                         # why there is no interval
    vs_best: PairedTest | None = None          # this row against the column's best row (None for the best)
    tied_with_best: bool | None = None         # None: not tested (the best row itself, a reference row, ...)
    ks: dict[str, Any] | None = None           # forget quality: statistic, p_value, n, m, p_min

    @property
    def at_p_min(self) -> bool:
        return bool(self.ks) and math.isclose(self.ks["p_value"], self.ks["p_min"], rel_tol=1e-9)


def record_groups(record: Mapping[str, Any], statistic: Statistic) -> dict | None:
    """The statistic's per-item arrays from one record; None when the record lacks them."""
    per_sample, aggregates = record.get("per_sample"), record.get("aggregates")
    if not isinstance(per_sample, Mapping) or not isinstance(aggregates, Mapping):
        return None
    try:
        return statistic.groups(per_sample, aggregates)
    except (KeyError, ValueError, TypeError):
        return None


def row_groups(records: Sequence[Mapping[str, Any]], statistic: Statistic | None) -> list | None:
    """The per-seed arrays of a row's records; None unless every scored record has them."""
    if statistic is None:
        return None
    scored = [r for r in records if (r.get("status") or "ok") != "failed"]
    groups = [record_groups(r, statistic) for r in scored]
    if not groups or any(g is None for g in groups):
        return None
    return groups


def cell_interval(records: Sequence[Mapping[str, Any]], column: Column) -> CellUncertainty:
    if column.interval is None:
        return CellUncertainty(why_none="no per-item statistic is declared for this column")
    groups = row_groups(records, column.interval)
    if groups is None:
        return CellUncertainty(why_none="the records hold no per-item scores for it, or fewer than 2 items")
    try:
        return CellUncertainty(bootstrap_interval(column.interval, groups, RESAMPLES, SEED))
    except ValueError as exc:   # seeds scored on different item counts
        return CellUncertainty(why_none=str(exc))


def test_against_best(best: Sequence[Mapping[str, Any]], other: Sequence[Mapping[str, Any]],
                      column: Column) -> PairedTest | None:
    """Paired bootstrap of ``other`` against ``best`` on the column's ranking quantity; None if untestable."""
    statistic = column.interval
    if statistic is None:
        return None
    if column.direction == "ref":
        statistic = _Distance(statistic, float(column.target))  # type: ignore[arg-type]
    a, b = row_groups(other, statistic), row_groups(best, statistic)
    if a is None or b is None:
        return None
    try:
        return paired_test(statistic, a, b, RESAMPLES, SEED)
    except ValueError:
        return None


def forget_quality_ks(records: Sequence[Mapping[str, Any]], section: Sequence[Mapping[str, Any]]) -> dict | None:
    """KS statistic, p, sizes and p_min of a row's forget quality, against the section's retain model's truth ratios.

    With several seeds, the first seed's (the table's note says the sizes, which all seeds share)."""
    retain = next((r for r in section if r.get("method") == "retain" and r.get("kind", "reference") == "reference"
                   and isinstance((r.get("reference_values") or {}).get("forget_truth_ratios"), list)), None)
    if retain is None:
        return None
    for record in records:
        own = (record.get("reference_values") or {}).get("forget_truth_ratios")
        if isinstance(own, list) and own:
            try:
                return ks_summary(own, retain["reference_values"]["forget_truth_ratios"])
            except (TypeError, ValueError):
                return None
    return None


FORGET_FAMILIES = ("verbatim", "knowledge", "privacy")


def within_target(row_values: Mapping[str, float | None], target: Mapping[str, CellUncertainty],
                  columns: Sequence[Column]) -> list[str]:
    """Forget-side columns whose value lies inside the target row's interval; all of them or [].

    Only columns where the target has an interval count; at least one must."""
    checked, inside = 0, []
    for c in columns:
        if c.family not in FORGET_FAMILIES:
            continue
        cell, value = target.get(c.key), row_values.get(c.key)
        if cell is None or cell.interval is None or value is None or not math.isfinite(value):
            continue
        checked += 1
        if cell.interval.lo <= value <= cell.interval.hi:
            inside.append(c.key)
    return inside if checked and len(inside) == checked else []


def record_intervals(columns: Sequence[Column], per_sample: Mapping[str, Any], aggregates: Mapping[str, Any]) -> dict:
    """``{column: {lo, hi, n, resamples, seed, ...}}`` for one evaluation, as stored in its record.

    Columns without a per-item statistic, or without the items, are left out (the table says why)."""
    record = {"per_sample": per_sample, "aggregates": aggregates}
    out = {}
    for c in columns:
        if c.key in aggregates:
            cell = cell_interval([record], c)
            if cell.interval is not None:
                out[c.key] = cell.interval.as_record()
    return out
