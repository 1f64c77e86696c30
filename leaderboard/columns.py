"""Leaderboard columns: which aggregate a column shows, how it is labelled and which way is better."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

#: direction -> the arrow shown in headers and the legend, and what it means.
DIRECTIONS: dict[str, tuple[str, str]] = {
    "up": ("↑", "higher is better"),
    "down": ("↓", "lower is better"),
    "ref": ("→", "closer to the given value is better"),
}

FAMILIES: tuple[str, ...] = ("verbatim", "knowledge", "privacy", "utility", "auxiliary")


def format_value(value: float, digits: int) -> str:
    """Fixed-point text with ``digits`` decimals; never '-0.0'; 'nan', 'inf', '-inf' as such."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    text = f"{value:.{digits}f}"
    if text.startswith("-") and Decimal(text) == 0:
        text = text[1:]
    return text


def header_text(label: str, direction: str, target: float | None = None) -> str:
    """'VerbMem f ↓', 'KnowMem r ↑', 'PrivLeak → 0': the label, its arrow, and a reference target."""
    arrow = DIRECTIONS[direction][0]
    if direction == "ref":
        return f"{label} {arrow} {format_target(target)}"  # type: ignore[arg-type]
    return f"{label} {arrow}"


def format_target(value: float) -> str:
    """A reference target as written in a header: 0.0 -> '0', 0.5 -> '0.5', never '-0'."""
    text = format(float(value), "g")
    return "0" if text in ("-0", "0") else text


@dataclass(frozen=True)
class Column:
    """One metric column of a benchmark's leaderboard table.

    ``key`` names the value in a record's ``aggregates``; ``direction`` says which way is
    better: ``"up"`` (higher), ``"down"`` (lower) or ``"ref"`` (closer to ``target``).
    """

    key: str
    label: str
    direction: str
    family: str
    target: float | None = None
    digits: int = 1
    sci_below: float = 0.0   # non-zero values smaller than this in magnitude are written as 1.8e-21
    # how the aggregate follows from the record's per-item scores (a harness.scoring.uncertainty.Statistic),
    # so that it gets a bootstrap interval and paired tests; None: no interval (said on the table)
    interval: Any = field(default=None, compare=False, repr=False)

    def format(self, value: float) -> str:
        """Fixed point with ``digits`` decimals, or two significant digits in scientific
        notation for tiny values (a forget quality of 1e-21 is not '0.000')."""
        if math.isfinite(value) and value != 0 and abs(value) < self.sci_below:
            return f"{value:.1e}"
        return format_value(value, self.digits)

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise ValueError(f"column key must be a non-empty string, got {self.key!r}")
        if not isinstance(self.label, str) or not self.label:
            raise ValueError(f"column '{self.key}': label must be a non-empty string, got {self.label!r}")
        if self.direction not in DIRECTIONS:
            raise ValueError(
                f"column '{self.key}': direction must be one of {', '.join(repr(d) for d in DIRECTIONS)}, "
                f"got {self.direction!r}"
            )
        if self.family not in FAMILIES:
            raise ValueError(
                f"column '{self.key}': family must be one of {', '.join(repr(f) for f in FAMILIES)}, "
                f"got {self.family!r}"
            )
        if self.direction == "ref":
            if self.target is None:
                raise ValueError(f"column '{self.key}': direction 'ref' needs a target value (e.g. target=0.0)")
            if isinstance(self.target, bool) or not isinstance(self.target, (int, float)) or not math.isfinite(
                self.target
            ):
                raise ValueError(f"column '{self.key}': target must be a finite number, got {self.target!r}")
        if isinstance(self.digits, bool) or not isinstance(self.digits, int) or not 0 <= self.digits <= 10:
            raise ValueError(f"column '{self.key}': digits must be an integer from 0 to 10, got {self.digits!r}")

    def header(self) -> str:
        """Header text: 'VerbMem f ↓', 'KnowMem r ↑', 'PrivLeak → 0'."""
        return header_text(self.label, self.direction, self.target)


#: prefix of the aggregates the lm-eval route adds (harness/engines/lm_eval_route.py): lm_eval/<task>/<metric>
LM_EVAL_PREFIX = "lm_eval/"


def lm_eval_columns(records, declared) -> list[Column]:
    """Columns for ``lm_eval/<task>/<metric>`` aggregates that records hold and the benchmark does not declare.

    They come from ``eval.lm_eval_tasks`` (MMLU or any lm-eval task as a utility family), so each is read as
    utility: higher is better. ``<metric>`` per document in ``per_sample["lm_eval/<task>"]`` gives the interval.
    """
    from harness.scoring.uncertainty import ItemMean

    known = {c.key for c in declared}
    keys = sorted({k for r in records for k in (r.get("aggregates") or {})
                   if k.startswith(LM_EVAL_PREFIX) and k not in known and k.count("/") == 2})
    out = []
    for key in keys:
        _, task, metric = key.split("/")
        out.append(Column(key, f"{task} {metric} (lm-eval)", "up", "utility", digits=3,
                          interval=ItemMean(f"lm_eval/{task}", metric)))
    return out
