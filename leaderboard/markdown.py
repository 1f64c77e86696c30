"""Render the Markdown leaderboard from stored run records.

One section per (benchmark, model, data cut): rows of runs that cut the benchmark down
differently (``--limit``, ``benchmark.*`` overrides) are never compared in one table. A section has a heading, a line naming the data source(s) and the
column legend, a GitHub-flavoured table, and numbered notes under it (diverged runs, the
checkpoint a selection rule other than ``last`` reported, stand-in data, the one-line reason
of a failed cell, shown as a row marked "(failed)"). Reference rows
(target, retain, ...) come first, then method rows by label.
Seeds of one (method, config_id) collapse into one row showing mean ± sample std.
A method run as a sweep (``harness run --sweep``) shows one row: the point its declared
``eval.select`` rule chose (``harness.run.sweep.choose_point``, the same function the run used),
labelled with that setting and epoch; the other points are listed in a note and drawn in the
trade-off plot.
The best method row per column is bold. The output depends only on the records' content,
never on their order or on the clock.
"""
from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass, field
from decimal import Decimal
from numbers import Real
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import quote

from tabulate import tabulate

from harness.run.results import atomic_write_text
from harness.run import sweep as sweeps
from harness.errors import HarnessError
from harness.run.selection import Context, utility_column

from .columns import DIRECTIONS, Column, format_value, lm_eval_columns
from .intervals import AT_P_MIN, TIED, CellUncertainty, cell_interval, forget_quality_ks, test_against_best, within_target
from .robustness import render_robustness
from .versions import render_version_note

__all__ = ["render_leaderboard", "write_leaderboard", "format_value", "section_key"]

MISSING = "n/a"
COLLAPSE_FRACTION = 0.5   # a method row whose utility stays below half the retain model's is "utility collapsed"
REFERENCE_ORDER = {"target": 0, "retain": 1}
_SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


# --------------------------------------------------------------------------- formatting


def _superscript(n: int) -> str:
    return str(n).translate(_SUPERSCRIPT)


def _cell(text: str) -> str:
    """Make free text safe inside a table cell: no line breaks, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _link_text(text: str) -> str:
    return _cell(text).replace("[", "\\[").replace("]", "\\]")


def _link_target(path: str) -> str:
    return quote(str(path).replace("\\", "/"), safe="/-._~+=,@:")


def _number(value: Any) -> float | None:
    """A numeric aggregate as float; None for anything that is not a number (bools included)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        return None
    return float(value)


def _seed_key(seed: Any) -> tuple:
    if isinstance(seed, bool) or not isinstance(seed, (int, float)):
        return (1, 0, str(seed))
    return (0, seed, "")


def _record_key(record: Mapping[str, Any]) -> tuple:
    """Total, content-based order for records (seed first), so input order never matters."""
    return (
        _seed_key(record.get("seed")),
        str(record.get("path") or ""),
        json.dumps(record, sort_keys=True, default=str),
    )


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _settings_text(settings: Any) -> str:
    if settings is None or settings == "":
        return MISSING
    if isinstance(settings, Mapping):
        return ", ".join(f"{k}={settings[k]}" for k in sorted(settings, key=str)) or MISSING
    return str(settings)


def _unique(values: Iterable[str]) -> list[str]:
    """Distinct values in first-seen order."""
    out: list[str] = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


# --------------------------------------------------------------------------- rows


@dataclass
class _Value:
    text: str  # cell text before bolding
    score: Decimal | None  # displayed mean as an exact decimal; None when missing or not finite
    mean: float | None = None   # the mean over seeds, full precision
    uncertainty: CellUncertainty = field(default_factory=CellUncertainty)

    def shown(self, column: Column) -> str:
        """The cell: mean and the 95% interval's half-width ('50.6 ±9.4'), '≤' before a forget quality at
        its smallest attainable p, its KS statistic after it, '≈' after a row tied with the best."""
        u, text = self.uncertainty, self.text
        if u.interval is not None and self.mean is not None and math.isfinite(self.mean):
            text = f"{column.format(self.mean)} ±{column.format((u.interval.hi - u.interval.lo) / 2)}" + (
                text[text.index(" ("):] if " (" in text else "")
        if u.ks is not None and self.score is not None:
            text = (f"{AT_P_MIN} " if u.at_p_min else "") + f"{text} (D {u.ks['statistic']:.2f})"
        if u.tied_with_best:
            text += f" {TIED}"
        return text


@dataclass
class _Row:
    kind: str
    method: str
    config_id: str
    records: list[dict]  # sorted by seed
    label: str = ""
    values: dict[str, _Value] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    no_op: list[str] = field(default_factory=list)   # 'unchanged' / 'not distinguishable from the target' / 'utility collapsed'
    sweep: "SweptRow | None" = None                   # the chosen point of a sweep, and every point swept
    collapsed: bool = False                           # utility far below the retain model's: a broken model

    @property
    def excluded_from_best(self) -> bool:
        return self.kind != "method" or self.collapsed or any(
            (r.get("status") or "ok") != "ok" for r in self.records
        )

    def sort_key(self) -> tuple:
        base = (self.label.casefold(), self.label, self.method, _settings_order(self.records[0]), self.config_id)
        if self.kind == "reference":
            return (0, REFERENCE_ORDER.get(self.method, len(REFERENCE_ORDER)), *base)
        return (1, 0, *base)


def _settings_order(record: Mapping[str, Any]) -> tuple:
    """Rows of one method (a sweep) in the natural order of their settings: r=-2 < r=-1 < r=0."""
    config = record.get("config") if isinstance(record.get("config"), Mapping) else {}
    out = []
    for section in ("method_config", "train"):
        values = config.get(section) if isinstance(config.get(section), Mapping) else {}
        for key in sorted(values, key=str):
            value = values[key]
            number = _number(value)
            if number is None and isinstance(value, str):
                try:
                    number = float(value)   # e.g. SGA's r, kept as text because it may be "auto"
                except ValueError:
                    pass
            out.append((str(key), (0, number, "") if number is not None else (1, 0.0, str(value))))
    return tuple(out)


def _kind(record: Mapping[str, Any]) -> str:
    kind = record.get("kind")
    if kind in ("method", "reference", "imported"):   # imported: re-scored published outputs, never ranked
        return kind
    return "reference" if record.get("method") in REFERENCE_ORDER else "method"


def _aggregate(records: Sequence[Mapping[str, Any]], column: Column) -> _Value:
    values = []
    for record in records:
        aggregates = record.get("aggregates") or {}
        v = _number(aggregates.get(column.key)) if isinstance(aggregates, Mapping) else None
        if v is not None:
            values.append(v)
    if not values:
        return _Value(MISSING, None)

    if all(math.isfinite(v) for v in values):
        mean = statistics.mean(values)  # exact (rational) arithmetic: independent of order
        text = column.format(mean)
        score: Decimal | None = Decimal(text)
        if len(values) > 1:
            text += " sd " + column.format(statistics.stdev(values))
    else:
        if any(math.isnan(v) for v in values) or (math.inf in values and -math.inf in values):
            mean = math.nan
        else:
            mean = math.inf if math.inf in values else -math.inf
        text, score = format_value(mean, column.digits), None

    if len(values) < len(records):
        text += f" ({len(values)}/{len(records)} seeds)"
    return _Value(text, score, float(mean))


def _note_texts(row: _Row) -> list[str]:
    """Notes for one row: divergence (or another non-ok status) per seed, selected checkpoints,
    stand-in data, non-default scoring settings."""
    notes: list[str] = []
    several = len(row.records) > 1
    for record in row.records:
        status = record.get("status") or "ok"
        if status == "ok":
            continue
        who = f"seed {record.get('seed')} " if several else ""
        if status == "failed":
            error = " ".join(str(record.get("error") or "no reason recorded").split())
            text = f"{who}failed: {error} (the record holds the traceback; re-run to retry)."
        elif status == "diverged":
            training = record.get("training") or {}
            step = training.get("diverged_at_step")
            loss = _number(training.get("last_finite_loss"))
            text = f"{who}diverged at step {step}" if step is not None else f"{who}diverged (step not recorded)"
            if loss is not None:
                text += f" (last finite loss {loss:.4g})"
            text += "; scores are of the weights at that point."
        else:
            text = f"{who}status '{status}'; scores may be incomplete."
        notes.append(text)
    for record in row.records:
        # a swept cell without per-epoch scores had one candidate: the sweep's note says what was chosen
        chosen = "" if record.get("sweep") and not record.get("epochs") else _selection_text(record)
        if chosen:
            notes.append(f"seed {record.get('seed')} {chosen}" if several else chosen)
    for record in row.records:
        stand_in = (record.get("data") or {}).get("stand_in")
        if stand_in:
            notes.append(f"stand-in data: {' '.join(str(stand_in).split())}")
    for record in row.records:  # splits whose generations are all empty or all the same (benchmarks/base.py)
        for warning in record.get("warnings") or []:
            if " generations " in str(warning):
                notes.append(" ".join(str(warning).split()))
    for record in row.records:  # scored with a non-default setting that changes scores
        for deviation in record.get("scoring_deviations") or []:
            notes.append(f"non-default scoring: {' '.join(str(deviation).split())}.")
    return _unique(notes)


def _selection_text(record: Mapping[str, Any]) -> str:
    """The checkpoint a selection rule reported instead of the final epoch ('' for the final epoch)."""
    chosen = record.get("selection")
    if not isinstance(chosen, Mapping) or chosen.get("rule") in (None, "last") or chosen.get("epoch") is None:
        return ""
    text = f"checkpoint of epoch {chosen['epoch']}, chosen by eval.select={chosen['rule']}"
    reason = " ".join(str(chosen.get("reason") or "").split())
    return f"{text}: {reason}." if reason else f"{text}."


@dataclass
class SweptRow:
    """A method's sweep as one row: the chosen point and all the points (each with its records)."""

    rule: str
    chosen: dict[str, str]
    epoch: int | None
    reason: str
    points: list[tuple[dict[str, str], list[dict]]]   # every point of the sweep, in grid order
    chosen_config: str = ""

    @property
    def shown(self) -> str:
        """What the row's label carries: the chosen setting and epoch."""
        text = f"selected: {sweeps.point_label(self.chosen)}"
        return text + (f", epoch {self.epoch}" if self.epoch is not None else "")

    @property
    def note(self) -> str:
        others = "; ".join(sweeps.point_label(p) for p, _ in self.points)
        return (f"operating point chosen by eval.select={self.rule} among {len(self.points)} swept points ({others}): "
                f"{' '.join(self.reason.split())}. Every point is drawn in the trade-off plot.")


def _reference_aggregates(records: Sequence[Mapping[str, Any]], role: str) -> dict | None:
    found = sorted((r for r in records if r.get("method") == role and _kind(r) == "reference"
                    and r.get("status") in ("ok", "diverged")), key=_record_key)
    return dict(found[0].get("aggregates") or {}) if found else None


def _select_sweeps(records: Sequence[Mapping[str, Any]], columns: Sequence[Column]
                   ) -> tuple[list[Mapping[str, Any]], dict[tuple[str, str], SweptRow]]:
    """Keep, of each method's sweep, only the chosen point's records; the rest ride along in a SweptRow."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for record in records:
        swept = record.get("sweep")
        if isinstance(swept, Mapping) and swept.get("id") and _kind(record) == "method":
            groups.setdefault((_text(record.get("method")), str(swept["id"])), []).append(record)
    if not groups:
        return list(records), {}
    retain, target = _reference_aggregates(records, "retain"), _reference_aggregates(records, "target")
    dropped: set[int] = set()
    chosen: dict[tuple[str, str], SweptRow] = {}
    for (method, _sid), members in sorted(groups.items()):
        by_config: dict[str, list[Mapping[str, Any]]] = {}
        for r in sorted(members, key=_record_key):
            by_config.setdefault(_text(r.get("config_id")), []).append(r)
        first = sorted(members, key=_record_key)[0]
        rule = first["sweep"].get("rule") or {}
        order = [tuple(p.items()) for p in sweeps.grid(first["sweep"].get("grid") or {})]
        points = sorted(((dict(rs[0]["sweep"].get("point") or {}), rs) for rs in by_config.values()),
                        key=lambda pr: (order.index(tuple(pr[0].items())) if tuple(pr[0].items()) in order
                                        else len(order), str(pr[0])))
        context = Context(columns, retain, target, rule.get("utility"), rule.get("forget"), float(rule.get("fraction", 0.9)))
        try:
            choice = sweeps.choose_point(points, str(rule.get("name") or "last"), context)
        except Exception:   # the rule cannot decide from these records (a reference row missing): show every point
            continue
        info = SweptRow(choice.rule, choice.point, choice.epoch, choice.reason, points, choice.config_id)
        chosen[(method, choice.config_id)] = info
        dropped.update(id(r) for r in members if _text(r.get("config_id")) != choice.config_id)
    return [r for r in records if id(r) not in dropped], chosen


def _build_rows(records: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> list[_Row]:
    records, swept = _select_sweeps(records, columns)
    groups: dict[tuple, _Row] = {}
    for record in records:
        kind = _kind(record)
        key = (kind, _text(record.get("method")), _text(record.get("config_id")))
        if key not in groups:
            groups[key] = _Row(kind=key[0], method=key[1], config_id=key[2], records=[])
        groups[key].records.append(dict(record))

    rows = list(groups.values())
    for row in rows:
        row.records.sort(key=_record_key)
        first = row.records[0]
        row.label = _text(first.get("row")) or row.method or "?"
        if all(r.get("status") == "failed" for r in row.records):
            row.label += " (failed)"
        row.values = {c.key: _aggregate(row.records, c) for c in columns}
        row.notes = _note_texts(row)
        row.sweep = swept.get((row.method, row.config_id)) if row.kind == "method" else None
        if row.sweep is not None:
            row.notes.insert(0, row.sweep.note)
    rows.sort(key=lambda r: r.sort_key())
    _add_uncertainty(rows, columns, records)
    return rows


def _add_uncertainty(rows: list[_Row], columns: Sequence[Column], section: Sequence[Mapping[str, Any]]) -> None:
    """Intervals, tests against each column's best row, forget quality's KS context, no-op flags
    (``leaderboard/intervals.py``)."""
    for row in rows:
        for c in columns:
            value = row.values[c.key]
            if value.score is None:
                continue
            value.uncertainty = cell_interval(row.records, c)
            if c.key == "forget_quality":
                value.uncertainty.ks = forget_quality_ks(row.records, section)
    _flag_collapse(rows, columns)

    def lacks(row: _Row) -> bool:
        declared = [c for c in columns if c.interval is not None and row.values[c.key].score is not None]
        return bool(declared) and all(row.values[c.key].uncertainty.interval is None for c in declared)

    if any(v.uncertainty.interval is not None for row in rows for v in row.values.values()):  # else the section note says it
        for row in rows:
            if lacks(row):
                row.notes.append("no intervals: the record holds no per-item scores (or fewer than 2 items).")
    for c in columns:
        best = sorted(_best_rows(rows, c))
        if not best:
            continue
        for i, row in enumerate(rows):
            if row.excluded_from_best or i in best or row.values[c.key].score is None:
                continue
            test = test_against_best(rows[best[0]].records, row.records, c)
            if test is not None:
                row.values[c.key].uncertainty.vs_best = test
                row.values[c.key].uncertainty.tied_with_best = not test.distinguishable
    target = next((r for r in rows if r.kind == "reference" and r.method == "target"), None)
    for row in rows:
        if row.kind != "method" or all(r.get("status") == "failed" for r in row.records):
            continue
        flags = [r.get("no_op") or {} for r in row.records]
        if flags and all(f.get("unchanged_weights") is True for f in flags):
            row.no_op.append("unchanged")
            row.notes.append("unchanged: the reported weights are bit-identical to the target's; training did not "
                             "move them.")
        elif target is not None:
            inside = within_target({k: v.mean for k, v in row.values.items()},
                                   {k: v.uncertainty for k, v in target.values.items()}, columns)
            if inside:
                labels = ", ".join(c.label for c in columns if c.key in inside)
                row.no_op.append("not distinguishable from the target")
                row.notes.append(f"not distinguishable from the target: every forget-side column with an interval "
                                 f"({labels}) lies inside the target's 95% interval.")


def _flag_collapse(rows: Sequence[_Row], columns: Sequence[Column]) -> None:
    """Mark method rows whose utility collapsed: the upper end of the utility's 95% interval lies below
    ``COLLAPSE_FRACTION`` of the retain model's utility. Such a model scores "well" on every forget
    column because it answers nothing; it stays in the table, named, but is never the bold best row
    (so the paired tests compare the other rows with a model that still works)."""
    retain = next((r for r in rows if r.kind == "reference" and r.method == "retain"), None)
    try:
        utility = utility_column(columns)
    except HarnessError:
        return
    if retain is None or utility.direction != "up":
        return
    reference = retain.values[utility.key].mean
    if reference is None or not math.isfinite(reference) or reference <= 0:
        return
    floor = COLLAPSE_FRACTION * reference
    for row in rows:
        value = row.values[utility.key]
        interval = value.uncertainty.interval
        if row.kind != "method" or interval is None or value.mean is None or not interval.hi < floor:
            continue
        row.collapsed = True
        row.no_op.append("utility collapsed")
        row.notes.append(
            f"utility collapsed: {utility.label} {utility.format(value.mean)} [{utility.format(interval.lo)}, "
            f"{utility.format(interval.hi)}] lies below {COLLAPSE_FRACTION:g} x the retain model's "
            f"{utility.format(reference)}; its forget columns describe a model that no longer answers, not "
            f"forgetting, so it is never the bold row.")


def _best_rows(rows: Sequence[_Row], column: Column) -> set[int]:
    """Indices of the method rows holding the best displayed value of ``column`` (ties: all)."""
    scored: list[tuple[int, Decimal]] = []
    for i, row in enumerate(rows):
        value = row.values[column.key]
        if row.excluded_from_best or value.score is None:
            continue
        if column.direction == "up":
            s = -value.score
        elif column.direction == "down":
            s = value.score
        else:
            s = abs(value.score - Decimal(repr(float(column.target))))  # type: ignore[arg-type]
        scored.append((i, s))
    if not scored:
        return set()
    best = min(s for _, s in scored)
    return {i for i, s in scored if s == best}


# --------------------------------------------------------------------------- sections


def _legend(columns: Sequence[Column]) -> str:
    used = {c.direction for c in columns}
    parts = [f"{arrow} {meaning}" for d, (arrow, meaning) in DIRECTIONS.items() if d in used]
    if not parts:
        return ""
    return (
        "Legend: " + ", ".join(parts) + "; **bold** = best method row per column (diverged runs and rows "
        f"whose utility collapsed, below {COLLAPSE_FRACTION:g} x the retain model's, excluded); "
        f"a ±h = mean and half-width of its 95% bootstrap interval over items (and seeds, when several); {TIED} = "
        "not distinguishable from the bold row (paired bootstrap on the same items, 95%); a sd s = mean and "
        "sample std over seeds where a column has no interval."
    )


def _uncertainty_note(rows: Sequence[_Row], columns: Sequence[Column]) -> str:
    """How the intervals were made, which columns have none and why, and forget quality's resolution."""
    from .intervals import RESAMPLES, SEED

    lines = []
    with_interval = [c for c in columns if any(r.values[c.key].uncertainty.interval for r in rows)]
    if with_interval:
        lines.append(f"Intervals: percentile bootstrap, {RESAMPLES} resamples, seed {SEED}; members and non-members "
                     "of an AUC resampled separately, a harmonic mean's items jointly per split, PrivLeak with the "
                     "retain model's AUC held fixed; several seeds: items and seeds both resampled.")
    none = [c for c in columns if c not in with_interval and any(r.values[c.key].score is not None for r in rows)]
    ks = next((r.values[c.key].uncertainty.ks for c in columns if c.key == "forget_quality" for r in rows
               if r.values[c.key].uncertainty.ks), None)
    reasons: dict[str, list[str]] = {}
    for c in none:
        if c.key == "forget_quality":
            text = f"{c.label}: no interval (a KS test's p-value, not an estimate)"
            if ks:
                text += (f"; D = KS statistic over n = {ks['n']} unlearned and m = {ks['m']} retain truth ratios; "
                         f"the smallest p these sizes allow is {ks['p_min']:.1e}, marked {AT_P_MIN}")
            lines.append(text + ".")
        else:
            why = next((r.values[c.key].uncertainty.why_none for r in rows if r.values[c.key].uncertainty.why_none), "")
            reasons.setdefault(why, []).append(c.label)
    lines += [f"{', '.join(labels)}: no interval ({why})." for why, labels in reasons.items()]
    return "\n".join(f"- {line}" for line in lines)


def _data_cut(records: Sequence[Mapping[str, Any]], short: bool = False) -> str:
    """How the runs cut the benchmark down (``--limit``, ``benchmark.*`` overrides), if they did."""
    limits, overrides = set(), set()
    for r in records:
        config = r.get("config") if isinstance(r.get("config"), Mapping) else {}
        if config.get("limit") is not None:
            limits.add(str(config["limit"]))
        given = r.get("overrides") if isinstance(r.get("overrides"), Mapping) else {}
        overrides.update(f"{k}={v}" for k, v in given.items() if str(k).startswith("benchmark."))
    parts = []
    if limits:
        parts.append(f"--limit {' / '.join(sorted(limits, key=lambda s: (len(s), s)))}"
                     + ("" if short else " (first N items of every split)"))
    if overrides:
        parts.append(", ".join(sorted(overrides)))
    return "; ".join(parts)


def section_key(record: Mapping[str, Any]) -> tuple[str, str, str]:
    """(benchmark, model, data cut): the records that share one leaderboard table."""
    return (_text(record.get("benchmark")) or "?", _text(record.get("model")) or "?", _data_cut([record], short=True))


def section_title(benchmark: str, model: str, cut: str) -> str:
    return f"{benchmark} — {model}" + (f" — {cut}" if cut else "")


def _render_section(benchmark: str, model: str, records: Sequence[Mapping[str, Any]],
                    columns: Sequence[Column] | None) -> str:
    known = columns is not None
    columns = list(columns or [])
    columns += lm_eval_columns(records, columns)   # eval.lm_eval_tasks: utility columns any benchmark may carry
    rows = _build_rows(records, columns)

    sources = sorted({str(s) for r in records if (s := (r.get("data") or {}).get("source"))})
    intro = f"Data: {'; '.join(sources) if sources else 'not recorded'}."
    cut = _data_cut(records)
    if cut:
        intro += f" Reduced: {cut}."
    legend = _legend(columns)
    if legend:
        intro += " " + legend
    if not known:
        intro += f" No columns are defined for benchmark '{benchmark}'; only run details are shown."

    # Notes numbered per section in row order; identical texts share one number.
    numbers: dict[str, int] = {}
    marks: list[list[int]] = []
    for row in rows:
        row_marks = []
        for note in row.notes:
            numbers.setdefault(note, len(numbers) + 1)
            row_marks.append(numbers[note])
        marks.append(row_marks)

    best = {c.key: _best_rows(rows, c) for c in columns}
    show_commit = any(r.get("commit") for r in records)

    headers = ["Model / method", *(c.header() for c in columns), "Seed(s)", "Settings"]
    align = ["left", *("right" for _ in columns), "right", "left"]
    if show_commit:
        headers.append("Commit")
        align.append("left")

    table = []
    for i, row in enumerate(rows):
        path = row.records[0].get("path")
        label = f"[{_link_text(row.label)}]({_link_target(path)})" if path else _link_text(row.label)
        if row.sweep is not None:   # the chosen setting and epoch of a swept method
            label += f" ({_cell(row.sweep.shown)})"
        if row.no_op:   # after the link, so the row's name stays the method's
            label += f" ({'; '.join(row.no_op)})"
        if marks[i]:
            label += ",".join(_superscript(n) for n in marks[i])
        cells = [label]
        for c in columns:
            text = _cell(row.values[c.key].shown(c))
            cells.append(f"**{text}**" if i in best[c.key] else text)
        cells.append(", ".join(_cell(_text(r.get("seed"))) or "?" for r in row.records))
        cells.append(" / ".join(_unique(_cell(_settings_text(r.get("settings"))) for r in row.records)))
        if show_commit:
            commits = _unique(_cell(str(r["commit"])) for r in row.records if r.get("commit"))
            cells.append(", ".join(commits) or MISSING)
        table.append(cells)

    body = tabulate(table, headers=headers, tablefmt="github", disable_numparse=True, colalign=align)
    parts = [f"## {section_title(benchmark, model, _data_cut(records, short=True))}", intro, body]
    if numbers:
        parts.append("\n".join(f"- {_superscript(n)} {note}" for note, n in numbers.items()))
    uncertainty = _uncertainty_note(rows, columns)
    if uncertainty:
        parts.append(uncertainty)
    mixed = render_version_note([r for row in rows for r in row.records])  # rows in table order
    if mixed:
        parts.append(mixed)
    robustness = render_robustness(rows, columns)
    if robustness:
        parts.append(robustness)
    return "\n\n".join(parts)


def render_leaderboard(records: list[dict], columns: dict[str, list[Column]], title: str = "Leaderboard") -> str:
    """The whole leaderboard as Markdown; the same records give the same bytes in any order."""
    sections: dict[tuple[str, str, str], list[dict]] = {}
    for record in records:
        sections.setdefault(section_key(record), []).append(record)

    parts = [f"# {title}"]
    if not sections:
        parts.append("No runs recorded yet.")
    for benchmark, model, cut in sorted(sections):
        group = sorted(sections[(benchmark, model, cut)], key=_record_key)
        parts.append(_render_section(benchmark, model, group, columns.get(benchmark)))
    return "\n\n".join(parts) + "\n"


def write_leaderboard(records: list[dict], columns: dict[str, list[Column]], path: str | os.PathLike,
                      title: str = "Leaderboard") -> str:
    """Render and write atomically (temp file in the same folder, then os.replace); return the text."""
    text = render_leaderboard(records, columns, title=title)
    atomic_write_text(Path(path), text)
    return text
