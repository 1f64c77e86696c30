"""The robustness table of a leaderboard section: what is left once a model is attacked (``eval.attacks``).

Per attack, one line for the retain model, one for the target and one per method row, each with
its *attacked* score and 95% bootstrap interval on the attack's items (the intervals are the
leaderboard's own, ``leaderboard/intervals.py``, from the attacked copy's per-item scores). The
retain model and the target are attacked alike, so the method rows are read against them:

- the guard (``harness.attacks.scores.guard``): if the attack took away more than a fifth of the
  target-retain gap, or more than its tolerance of the retain model's utility, the method rows say
  "attack damaged the model" instead of a number;
- the residual share ``(method − retain) / (target − retain)`` (all attacked), with its paired
  bootstrap interval, only where ``|target − retain|`` exceeds the width of both their intervals;
  never for forget quality (a p-value);
- OpenUnlearning's R (relearn-openunlearning) and Q (int4) and their harmonic mean, on the columns
  where a higher value means more knowledge.

Seeds of one row are averaged.

With ``attack.relearn_lr_grid`` each method row shows the grid point it kept, and the references are
read at that same point (their records hold every point): methods that kept different points get
separate tables. With ``attack.relearn_curve`` a compact table per attack gives the declared column
after every relearning step.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from tabulate import tabulate

from harness.attacks.scores import (
    DAMAGED,
    Guard,
    distance_columns,
    forget_columns,
    guard,
    harmonic,
    knowledge_columns,
    quantisation_robustness,
    relearn_robustness,
    residual_share,
    share_interval,
    utility_key,
)
from harness.attacks.suite import ALIASES, ATTACKS, ITEMS, OPENUNLEARNING

from .columns import Column
from .intervals import cell_interval, row_groups

DEFAULT_GUARD = {"gap": 0.8, "utility": 0.1}


@dataclass
class AttackLine:
    label: str
    attack: str
    kind: str                                                  # "retain", "target" or "method"
    blocks: list = field(default_factory=list)                 # the attack's block of each seed's record
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, tuple[float, float] | None] = field(default_factory=dict)
    shares: dict[str, dict[str, Any]] = field(default_factory=dict)   # column -> {"value", "lo", "hi"} or {"why"}

    @property
    def baseline(self) -> bool:
        return self.kind != "method"


@dataclass
class AttackTable:
    attack: str
    lines: list[AttackLine]
    guard: Guard | None
    why_no_guard: str = ""
    note: str = ""         # with a learning-rate grid: the point the table reads and which methods kept it
    short: str = ""        # the same, for a plot's panel title

    @property
    def title(self) -> str:
        return f"{self.attack} {self.short}".strip()


def _mean(blocks: Sequence[Mapping[str, Any]], part: str) -> dict[str, float]:
    keys = {k for b in blocks for k in (b.get(part) or {})}
    out = {}
    for key in keys:
        values = [float(v) for b in blocks if isinstance(v := (b.get(part) or {}).get(key), (int, float))
                  and not isinstance(v, bool) and math.isfinite(float(v))]
        if values:
            out[key] = statistics.fmean(values)
    return out


GRID_PART = ("aggregates", "per_sample", "missing", "curve", "training", "settings")


def _blocks(row, name: str, points: Mapping[Any, float] | None = None) -> list[dict]:
    """The attack's block of each of the row's records (a 0.1 record's ``relearn`` is relearn-heldout).

    ``points`` ({record seed: grid multiple}): read each record at that point of its learning-rate grid."""
    out = []
    for rec in row.records:
        attacks = {ALIASES.get(k, k): v for k, v in (rec.get("attacks") or {}).items()}
        block = attacks.get(name)
        if not isinstance(block, Mapping):
            continue
        multiple = (points or {}).get(rec.get("seed"))
        grid = block.get("lr_grid") if isinstance(block.get("lr_grid"), Mapping) else {}
        point = next((p for p in grid.get("points") or [] if p.get("multiple") == multiple), None)
        out.append({**block, **{k: point[k] for k in GRID_PART if k in point}} if point else block)
    return out


def _grid_points(row, name: str) -> dict[Any, float] | None:
    """{seed: the grid multiple the row shows} when its records of ``name`` carry a learning-rate grid."""
    out = {}
    for rec in row.records:
        block = ((rec.get("attacks") or {}).get(name) or {})
        grid = block.get("lr_grid") if isinstance(block, Mapping) else None
        if isinstance(grid, Mapping) and grid.get("shown") is not None:
            out[rec.get("seed")] = grid["shown"]
    return out or None


def _kept_text(row, name: str) -> str:
    kept = []
    for rec in row.records:
        grid = ((rec.get("attacks") or {}).get(name) or {}).get("lr_grid") or {}
        kept.append(f"x{grid['kept']:g}" if grid.get("kept") is not None else f"none ({grid.get('why', '')})")
    return ", ".join(dict.fromkeys(kept))


def _method_groups(methods, name: str) -> list[tuple[dict | None, list]]:
    """The method rows, grouped by the grid points they show (one group, None, without a grid)."""
    groups: dict[Any, tuple[dict | None, list]] = {}
    for row in methods:
        points = _grid_points(row, name)
        key = tuple(sorted(points.items(), key=lambda kv: str(kv[0]))) if points else None
        groups.setdefault(key, (points, []))[1].append(row)
    return list(groups.values()) or [(None, [])]


def utility_column(columns: Sequence[Column]) -> Column | None:
    """The column the guard reads (``scores.utility_key``: one rule for cell time and the leaderboard)."""
    key = utility_key(columns)
    return next((c for c in columns if c.key == key), None)


def _guard_settings(rows) -> dict[str, float]:
    for row in rows:
        for rec in row.records:
            found = ((rec.get("config") or {}).get("attack") or {}).get("guard")
            if isinstance(found, Mapping):
                return {**DEFAULT_GUARD, **found}
    return dict(DEFAULT_GUARD)


def _line(row, name: str, kind: str, label: str, columns: Sequence[Column],
          points: Mapping[Any, float] | None = None) -> AttackLine:
    blocks = _blocks(row, name, points)
    line = AttackLine(label, name, kind, blocks, _mean(blocks, "unattacked"), _mean(blocks, "aggregates"))
    for c in columns:
        cell = cell_interval(blocks, c) if c.key in line.after else None
        line.intervals[c.key] = (cell.interval.lo, cell.interval.hi) if cell and cell.interval else None
    return line


def attack_tables(rows, columns: Sequence[Column]) -> list[AttackTable]:
    """One table per attack found in the section's records. ``rows``: the leaderboard's grouped rows
    (``markdown._build_rows``), in display order."""
    retain = next((r for r in rows if r.kind == "reference" and r.method == "retain"), None)
    target = next((r for r in rows if r.kind == "reference" and r.method == "target"), None)
    methods = [r for r in rows if r.kind == "method"]
    labels = [r.label for r in methods]
    settings = _guard_settings(rows)
    utility = utility_column(columns)
    tables = []
    for name in ATTACKS:
        if not any(_blocks(r, name) for r in rows):
            continue
        for points, members in _method_groups([m for m in methods if _blocks(m, name)], name):
            lines = []
            ref = {}
            for kind, row in (("retain", retain), ("target", target)):
                if row is not None and _blocks(row, name):
                    ref[kind] = _line(row, name, kind, row.label, columns, points)
                    lines.append(ref[kind])
            for row in members:
                label = row.label if labels.count(row.label) == 1 else f"{row.label} [{row.config_id}]"
                lines.append(_line(row, name, "method", label, columns))
            note, short = _grid_note(points, members, name)
            if len(ref) < 2:
                tables.append(AttackTable(name, lines, None, "the target or the retain model was not attacked (records "
                                          "made before both were): rerun them to read this attack", note, short))
                continue
            t, r = ref["target"], ref["retain"]
            noise = {c.key: max(hi - lo for lo, hi in bounds) for c in columns
                     if all(bounds := [x.intervals.get(c.key) for x in (t, r)])}
            verdict = guard(t.before, t.after, r.before, r.after, columns, utility.key if utility else None,
                            settings["gap"], settings["utility"], noise)
            tables.append(AttackTable(name, lines, verdict, "", note, short))
            if verdict.passed:
                for line in lines:
                    if line.kind == "method":
                        line.shares = _shares(line, t, r, columns)
    return tables


def _grid_note(points: Mapping[Any, float] | None, members, name: str) -> tuple[str, str]:
    """What a table read under a learning-rate grid says about its point ('' without a grid)."""
    if not points:
        return "", ""
    shown = ", ".join(f"x{m:g}" for m in dict.fromkeys(points.values()))
    kept = "; ".join(f"{row.label} kept {_kept_text(row, name)}" for row in members) or "no method row"
    return (f"learning-rate grid (attack.relearn_lr_grid): read at {shown} the budgeted rate, the retain model and the "
            f"target attacked at the same point ({kept})", f"@ lr {shown}")


def _shares(line: AttackLine, target: AttackLine, retain: AttackLine, columns: Sequence[Column]) -> dict:
    out = {}
    for c in distance_columns(columns):
        ti, ri = target.intervals.get(c.key), retain.intervals.get(c.key)
        tv, rv, mv = target.after.get(c.key), retain.after.get(c.key), line.after.get(c.key)
        if ti is None or ri is None or None in (tv, rv, mv):
            out[c.key] = {"why": "no interval for the target or the retain model"}
            continue
        width = max(ti[1] - ti[0], ri[1] - ri[0])
        if abs(tv - rv) <= width:
            out[c.key] = {"why": f"|target − retain| = {abs(tv - rv):.3g} is within the intervals' width {width:.3g}"}
            continue
        value = residual_share(mv, rv, tv)
        groups = [row_groups(x.blocks, c.interval) for x in (line, retain, target)]
        bounds = share_interval(c.interval, *groups) if all(g is not None for g in groups) else None
        out[c.key] = {"value": value, "lo": bounds[0] if bounds else None, "hi": bounds[1] if bounds else None}
    return out


def robustness_scores(tables: Sequence[AttackTable], columns: Sequence[Column]) -> dict[str, dict[str, dict]]:
    """{method label: {column: {"R", "Q", "HM"}}} from relearn-openunlearning (R) and int4 (Q) lines.

    An attack whose guard found it damaging gives no score: its "recovery" is the damage, the same
    reason its table shows no method numbers (R or Q stays None, so HM is None too)."""
    by_name = {t.attack: t for t in tables}
    out: dict[str, dict[str, dict]] = {}
    relearn, quant = by_name.get(OPENUNLEARNING), by_name.get("int4")
    relearn = None if relearn is not None and _damaged(relearn) else relearn
    quant = None if quant is not None and _damaged(quant) else quant
    retain = next((ln for ln in relearn.lines if ln.kind == "retain"), None) if relearn else None
    for c in knowledge_columns(columns):
        for line in (relearn.lines if relearn and retain else []):
            if line.kind == "method":
                r = relearn_robustness(line.before.get(c.key), line.after.get(c.key),
                                       retain.before.get(c.key), retain.after.get(c.key))
                out.setdefault(line.label, {}).setdefault(c.key, {})["R"] = r
        for line in (quant.lines if quant else []):
            if line.kind == "method":
                out.setdefault(line.label, {}).setdefault(c.key, {})["Q"] = quantisation_robustness(
                    line.before.get(c.key), line.after.get(c.key))
    for per_column in out.values():
        for cell in per_column.values():
            cell["HM"] = harmonic(cell.get("R"), cell.get("Q"))
    return out


def _damaged(table: AttackTable) -> bool:
    return table.guard is not None and table.guard.damaged


def _percent(value: float | None) -> str:
    if value is None:
        return "n/a"
    text = f"{100 * value:+.0f}%"
    return "0%" if text in ("+0%", "-0%") else text


def _cell(c: Column, line: AttackLine, damaged: bool) -> str:
    if damaged and line.kind == "method":
        return "—"
    value = line.after.get(c.key)
    if value is None:
        return "n/a"
    text = c.format(value)
    bounds = line.intervals.get(c.key)
    if bounds:
        text += f" [{c.format(bounds[0])}, {c.format(bounds[1])}]"
    share = line.shares.get(c.key)
    if share and "value" in share:
        text += f"; share {_percent(share['value'])}"
        if share.get("lo") is not None:
            text += f" [{_percent(share['lo'])}, {_percent(share['hi'])}]"
    return text


def curve_column(table: AttackTable, columns: Sequence[Column]) -> Column | None:
    """The column a relearning curve is shown for: the grid's declared column, else the first knowledge column scored."""
    declared = next((((b.get("lr_grid") or {}).get("column")) for ln in table.lines for b in ln.blocks
                     if isinstance(b.get("lr_grid"), Mapping)), None)
    keys = [c for c in knowledge_columns(columns) if c.key == declared] if declared else []
    scored = [c for c in knowledge_columns(columns)
              if any(c.key in (p.get("aggregates") or {}) for ln in table.lines for b in ln.blocks
                     for p in b.get("curve") or [])]
    return (keys or scored or [None])[0]


def curve_values(line: AttackLine, key: str) -> dict[int, float]:
    """{step: the column's value after that step, averaged over the line's seeds}."""
    by_step: dict[int, list[float]] = {}
    for block in line.blocks:
        for point in block.get("curve") or []:
            value = (point.get("aggregates") or {}).get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value)):
                by_step.setdefault(int(point["step"]), []).append(float(value))
    return {step: statistics.fmean(values) for step, values in sorted(by_step.items())}


def render_curve(table: AttackTable, columns: Sequence[Column]) -> str:
    """The compact relearning-curve table of an attack (attack.relearn_curve), or '' without a curve."""
    column = curve_column(table, columns)
    if column is None:
        return ""
    curves = {id(ln): curve_values(ln, column.key) for ln in table.lines}
    steps = sorted({s for c in curves.values() for s in c})
    if not steps:
        return ""
    body = []
    for line in table.lines:
        before = line.before.get(column.key)
        cells = [column.format(before) if before is not None else "n/a"]
        cells += [column.format(v) if (v := curves[id(line)].get(s)) is not None else "n/a" for s in steps]
        body.append([line.label + (" (reference)" if line.baseline else ""), *cells])
    title = (f"Relearning curve of *{table.title}* (attack.relearn_curve): {column.label} on the attack's items before "
             "the attack (step 0) and after each optimiser step.")
    return title + "\n\n" + tabulate(body, headers=["Model / method", "step 0", *(f"step {s}" for s in steps)],
                                      tablefmt="github", disable_numparse=True,
                                      colalign=["left", *("right" for _ in range(len(steps) + 1))])


def render_robustness(rows, columns: Sequence[Column]) -> str:
    """The tables and their legend as Markdown, or '' when no record of the section was attacked."""
    tables = attack_tables(rows, columns)
    if not tables:
        return ""
    forget = forget_columns(columns)
    utility = utility_column(columns)
    shown = forget + ([utility] if utility else [])
    settings = _guard_settings(rows)
    parts = [
        "**Robustness** (`eval.attacks`, docs/attacks.md): each cell is the *attacked* score on the attack's items "
        "with its 95% bootstrap interval. The retain model and the target are attacked alike. An attack counts only "
        f"if the attacked target keeps at least {settings['gap']:.0%} of the target−retain gap on every forget column "
        f"and the attacked retain model keeps its utility within {settings['utility']:.0%}; otherwise the method rows "
        f"read \"{DAMAGED}\". Method rows add the residual share (method − retain) / (target − retain), all "
        "attacked (0: like the never-trained model, 100%: like the target), with its paired bootstrap interval, where "
        "|target − retain| exceeds the width of both intervals; forget quality (a p-value) never gets one."
    ]
    headers = ["Model / method", "Attack (items)", *(c.header() for c in shown)]
    for table in tables:
        damaged = table.guard is not None and table.guard.damaged
        body = []
        for line in table.lines:
            label = line.label + (" (reference)" if line.baseline else "")
            cells = [_cell(c, line, damaged) for c in shown]
            if damaged and line.kind == "method":
                cells[0] = DAMAGED
            body.append([label, f"{line.attack} ({ITEMS.get(line.attack, 'all items')})", *cells])
        if table.guard is None:
            status = table.why_no_guard
        elif table.guard.passed:
            status = "guard passed"
        elif not table.guard.damaged:
            status = ("nothing to read: the target and the retain model differ measurably (beyond the column's last "
                      "digit and their intervals) on no forget column")
        else:
            status = f"{DAMAGED}: " + "; ".join(table.guard.reasons)
        parts.append(f"*{table.attack}*: {status}." + (f" ({table.note}.)" if table.note else ""))
        parts.append(tabulate(body, headers=headers, tablefmt="github", disable_numparse=True,
                              colalign=["left", "left", *("right" for _ in shown)]))
        curve = render_curve(table, columns)
        if curve:
            parts.append(curve)
    scores = robustness_scores(tables, columns)
    keys = knowledge_columns(columns)
    if scores and keys:
        damaged = [t.attack for t in tables if t.attack in (OPENUNLEARNING, "int4") and _damaged(t)]
        parts.append("OpenUnlearning's robustness (Dorna et al. 2025, arXiv 2506.12618, Sec. 4.1) per method: "
                     "R = min((retain after − retain before) / (method after − method before), 1) under "
                     "relearn-openunlearning, Q = min(before / after, 1) under int4, and HM(R, Q); 1 is best."
                     + (f" n/a for {' and '.join(damaged)}: its guard found the attack damaging, so there is "
                        "no score to take from it." if damaged else ""))
        body = [[label, *(" / ".join("n/a" if (v := per.get(c.key, {}).get(k)) is None else f"{v:.2f}"
                                     for k in ("R", "Q", "HM")) for c in keys)]
                for label, per in scores.items()]
        parts.append(tabulate(body, headers=["Method", *(f"{c.label} R / Q / HM" for c in keys)], tablefmt="github",
                              disable_numparse=True, colalign=["left", *("right" for _ in keys)]))
    return "\n\n".join(parts)
