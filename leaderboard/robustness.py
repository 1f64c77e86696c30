"""The robustness table of a leaderboard section: what the attacks of ``eval.attacks`` brought back.

One line per (row, attack): the retain model first (the baseline: how much a model that never saw
the forget data "recovers" under the same attack), then the method rows in leaderboard order. Each
forget-side cell reads ``unattacked → attacked (recovery)``; both scores are on the attack's items
(relearn: the scored half of the forget set; int8/int4: all items), and the recovery
``(attacked − unlearned) / (target − unlearned)`` uses the target's scores on the same items
(``harness.attacks.suite.recoveries``). Lines of the target on those items close the table.
Seeds of one row are averaged before the recovery is taken.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from tabulate import tabulate

from harness.attacks.suite import ATTACKS, RELEARN, forget_columns, recoveries

from .columns import Column

ITEMS = {RELEARN: "scored half"}


@dataclass
class AttackLine:
    label: str
    attack: str
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    recovery: dict[str, dict[str, Any]] = field(default_factory=dict)
    baseline: bool = False


def _mean(blocks: Sequence[Mapping[str, Any]], part: str) -> dict[str, float]:
    keys = {k for b in blocks for k in (b.get(part) or {})}
    out = {}
    for key in keys:
        values = [float(v) for b in blocks if isinstance(v := (b.get(part) or {}).get(key), (int, float))
                  and not isinstance(v, bool) and math.isfinite(float(v))]
        if values:
            out[key] = statistics.fmean(values)
    return out


def attack_lines(rows, columns: Sequence[Column]) -> tuple[list[AttackLine], dict[str, dict[str, float]]]:
    """(one line per attacked row and attack, the target's scores per attack) of one section's rows.

    ``rows`` are the leaderboard's grouped rows (``markdown._build_rows``), in display order.
    """
    target_rows = [r for r in rows if r.kind == "reference" and r.method == "target"]
    target: dict[str, dict[str, float]] = {}
    if target_rows:
        records = target_rows[0].records
        full = _mean([{"aggregates": r.get("aggregates")} for r in records], "aggregates")
        scored = _mean([(r.get("attacks") or {}).get(RELEARN) or {} for r in records], "unattacked")
        target = {name: (scored if name == RELEARN else full) for name in ATTACKS}
        if not scored:
            target.pop(RELEARN)
    ordered = ([r for r in rows if r.kind == "reference" and r.method == "retain"]
               + [r for r in rows if r.kind == "method"])
    lines = []
    seen = [r.label for r in ordered]
    for row in ordered:
        label = row.label if seen.count(row.label) == 1 else f"{row.label} [{row.config_id}]"  # a sweep: one row per setting
        names = [n for n in ATTACKS if any(n in (rec.get("attacks") or {}) for rec in row.records)]
        for name in names:
            blocks = [(rec.get("attacks") or {})[name] for rec in row.records if name in (rec.get("attacks") or {})]
            line = AttackLine(label, name, _mean(blocks, "unattacked"), _mean(blocks, "aggregates"),
                              baseline=row.kind == "reference")
            if name in target:
                line.recovery = recoveries(line.after, line.before, target[name], columns)
            lines.append(line)
    return lines, target


def _percent(value: float | None) -> str:
    if value is None:
        return "n/a"
    text = f"{100 * value:+.0f}%"
    return "0%" if text in ("+0%", "-0%") else text


def _utility_column(columns: Sequence[Column]) -> Column | None:
    utility = [c for c in columns if c.family == "utility"]
    return next((c for c in utility if c.key == "model_utility"), utility[-1] if utility else None)


def render_robustness(rows, columns: Sequence[Column]) -> str:
    """The table and its legend as Markdown, or '' when no record of the section was attacked."""
    lines, target = attack_lines(rows, columns)
    if not lines:
        return ""
    forget = forget_columns(columns)
    utility = _utility_column(columns)
    shown = forget + ([utility] if utility else [])

    def fmt(column: Column, values: Mapping[str, float], key: str | None = None) -> str:
        v = values.get(key or column.key)
        return "n/a" if v is None else column.format(v)

    headers = ["Model / method", "Attack", *(c.header() for c in shown)]
    table = []
    for line in lines:
        cells = [line.label + (" (baseline)" if line.baseline else ""), f"{line.attack} ({ITEMS.get(line.attack, 'all items')})"]
        for c in shown:
            text = f"{fmt(c, line.before)} → {fmt(c, line.after)}"
            if c in forget and line.recovery:
                text += f" ({_percent(line.recovery[c.key]['value'])})"
            cells.append(text)
        table.append(cells)
    scopes: dict[str, str] = {}   # items -> an attack scored on them: one target line per set of items
    for line in lines:
        scopes.setdefault(ITEMS.get(line.attack, "all items"), line.attack)
    for items, name in scopes.items():
        if name in target:
            table.append(["Target", f"none ({items})", *(fmt(c, target[name]) for c in shown)])
    body = tabulate(table, headers=headers, tablefmt="github", disable_numparse=True,
                    colalign=["left", "left", *("right" for _ in shown)])
    legend = (
        "**Robustness** (`eval.attacks`): each cell reads unattacked → attacked score on the attack's items, and for "
        "forget-side metrics (recovery) = (attacked − unlearned) / (target − unlearned), the share of what unlearning "
        "removed that came back (n/a: the target and the unlearned model differ by less than the column's last "
        "digit). relearn: a few fine-tuning steps on one half of the forget units, scored on the other half; "
        "int8/int4: round-to-nearest weight quantisation per group. The retain model is the baseline: what the same "
        "attack gives a model that never saw the forget data. Settings and seeds are in each record's `attacks`."
    )
    return legend + "\n\n" + body
